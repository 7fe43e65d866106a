// Row softmax and its backward (one block per row). Reference: reference backend softmax(Backward).
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__global__ void softmaxKernel(const float* __restrict__ x, int n, float* __restrict__ y) {
  __shared__ float scratch[32];
  const float* xr = x + int64_t(blockIdx.x) * n;
  float* yr = y + int64_t(blockIdx.x) * n;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = blockMax(m, scratch);
  float sum = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) sum += expf(xr[j] - m);
  sum = blockSum(sum, scratch);
  const float inv = 1.0f / sum;
  for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
}

__global__ void softmaxBackwardKernel(const float* __restrict__ dy, const float* __restrict__ y, int n, float* __restrict__ dx) {
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * n;
  float dot = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) dot = fmaf(dy[base + j], y[base + j], dot);
  dot = blockSum(dot, scratch);
  for (int j = threadIdx.x; j < n; j += blockDim.x) dx[base + j] = y[base + j] * (dy[base + j] - dot);
}

}  // namespace

void softmax(cudaStream_t s, const float* x, int64_t rows, int n, float* y) {
  require(rows >= 0 && rows <= INT32_MAX && n >= 1, "softmax: rows in [0, 2^31-1], n ≥ 1");
  if (rows == 0) return;
  softmaxKernel<<<unsigned(rows), 256, 0, s>>>(x, n, y);
  QK_LAUNCH_CHECK("softmaxKernel");
}

void softmaxBackward(cudaStream_t s, const float* dy, const float* y, int64_t rows, int n, float* dx) {
  require(rows >= 0 && rows <= INT32_MAX && n >= 1, "softmaxBackward: rows in [0, 2^31-1], n ≥ 1");
  if (rows == 0) return;
  softmaxBackwardKernel<<<unsigned(rows), 256, 0, s>>>(dy, y, n, dx);
  QK_LAUNCH_CHECK("softmaxBackwardKernel");
}

}  // namespace qk
