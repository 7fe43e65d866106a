// SwiGLU: y = silu(gate) · up and its backward. Reference: reference backend swiglu(Backward).
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__global__ void swigluKernel(const float* __restrict__ g, const float* __restrict__ u, int64_t n, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = g[i];
    y[i] = x / (1.0f + expf(-x)) * u[i];
  }
}

// d silu(x)/dx = s·(1 + x·(1 − s)), s = sigmoid(x)
__global__ void swigluBackwardKernel(const float* __restrict__ dy, const float* __restrict__ g, const float* __restrict__ u,
                                     int64_t n, float* __restrict__ dg, float* __restrict__ du) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = g[i], sg = 1.0f / (1.0f + expf(-x));
    dg[i] = dy[i] * u[i] * sg * (1.0f + x * (1.0f - sg));
    du[i] = dy[i] * x * sg;
  }
}

}  // namespace

void swiglu(cudaStream_t s, const float* gate, const float* up, int64_t n, float* y) {
  if (n <= 0) return;
  swigluKernel<<<gridFor(n, 256), 256, 0, s>>>(gate, up, n, y);
  QK_LAUNCH_CHECK("swigluKernel");
}

void swigluBackward(cudaStream_t s, const float* dy, const float* gate, const float* up, int64_t n, float* dgate, float* dup) {
  if (n <= 0) return;
  swigluBackwardKernel<<<gridFor(n, 256), 256, 0, s>>>(dy, gate, up, n, dgate, dup);
  QK_LAUNCH_CHECK("swigluBackwardKernel");
}

}  // namespace qk
