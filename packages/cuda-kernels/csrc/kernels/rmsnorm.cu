// RMSNorm forward/backward. Reference: reference backend rmsNorm / rmsNormBackward (f32).
// dweight is a deterministic column reduction (no atomics), so repeated runs give equal bits.
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__global__ void rmsNormKernel(const float* __restrict__ x, const float* __restrict__ w, int dim, float eps,
                              float* __restrict__ y, float* __restrict__ rstd) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  float ss = 0.f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) ss = fmaf(xr[j], xr[j], ss);
  ss = blockSum(ss, scratch);
  const float r = 1.0f / sqrtf(ss / dim + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) y[row * dim + j] = xr[j] * r * w[j];
}

// dx_j = r·w_j·dy_j − x_j · r³/dim · Σ_i dy_i·w_i·x_i
__global__ void rmsNormBackwardKernel(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ rstd, int dim, float* __restrict__ dx) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  const float* dyr = dy + row * dim;
  float dot = 0.f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dot = fmaf(dyr[j] * w[j], xr[j], dot);
  dot = blockSum(dot, scratch);
  const float r = rstd[row];
  const float c = dot * r * r * r / dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dx[row * dim + j] = r * w[j] * dyr[j] - xr[j] * c;
}

__global__ void rmsNormWeightGradKernel(const float* __restrict__ dy, const float* __restrict__ x,
                                        const float* __restrict__ rstd, int64_t rows, int dim, float* __restrict__ dw) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= dim) return;
  float acc = 0.f;
  for (int64_t r = 0; r < rows; ++r) acc = fmaf(dy[r * dim + j] * x[r * dim + j], rstd[r], acc);
  dw[j] = acc;
}

}  // namespace

void rmsNorm(cudaStream_t s, const float* x, const float* weight, int64_t rows, int dim, float eps, float* y, float* rstd) {
  require(rows >= 0 && rows <= INT32_MAX && dim >= 1, "rmsNorm: rows must be in [0, 2^31-1], dim ≥ 1");
  if (rows == 0) return;
  rmsNormKernel<<<unsigned(rows), 256, 0, s>>>(x, weight, dim, eps, y, rstd);
  QK_LAUNCH_CHECK("rmsNormKernel");
}

void rmsNormBackward(cudaStream_t s, const float* dy, const float* x, const float* weight, const float* rstd,
                     int64_t rows, int dim, float* dx, float* dweight) {
  require(rows >= 0 && rows <= INT32_MAX && dim >= 1, "rmsNormBackward: rows must be in [0, 2^31-1], dim ≥ 1");
  if (rows > 0) {
    rmsNormBackwardKernel<<<unsigned(rows), 256, 0, s>>>(dy, x, weight, rstd, dim, dx);
    QK_LAUNCH_CHECK("rmsNormBackwardKernel");
  }
  rmsNormWeightGradKernel<<<(dim + 255) / 256, 256, 0, s>>>(dy, x, rstd, rows, dim, dweight);
  QK_LAUNCH_CHECK("rmsNormWeightGradKernel");
}

}  // namespace qk
