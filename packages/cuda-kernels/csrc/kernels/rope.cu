// Rotary embedding, Hugging Face rotate_half convention. Reference: reference backend rope.
// Angles are computed in double (pos · theta^(−2i/d)) and rounded once, so large positions do not
// lose accuracy; the f32 rotation then matches the reference to float rounding.
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__global__ void ropeKernel(const float* __restrict__ x, const int32_t* __restrict__ pos, int64_t tokens, int heads,
                           int headDim, double theta, bool inverse, float* __restrict__ y) {
  const int half = headDim / 2;
  const int64_t total = tokens * heads * half;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int i = t % half;
    const int64_t headRow = t / half;  // (token, head)
    const int64_t token = headRow / heads;
    const double invFreq = pow(theta, -2.0 * i / headDim);
    double sn, cs;
    sincos(static_cast<double>(pos[token]) * invFreq, &sn, &cs);
    const float c = static_cast<float>(cs), sgn = static_cast<float>(inverse ? -sn : sn);
    const float* xr = x + headRow * headDim;
    float* yr = y + headRow * headDim;
    const float a = xr[i], b = xr[i + half];
    yr[i] = a * c - b * sgn;
    yr[i + half] = b * c + a * sgn;
  }
}

}  // namespace

void rope(cudaStream_t s, const float* x, const int32_t* positions, int batch, int seq, int heads, int headDim,
          float theta, bool inverse, float* y) {
  require(batch >= 0 && seq >= 0 && heads >= 1 && headDim >= 2 && headDim % 2 == 0, "rope: bad shape (headDim must be even)");
  const int64_t tokens = int64_t(batch) * seq;
  if (tokens == 0) return;
  ropeKernel<<<gridFor(tokens * heads * (headDim / 2), 256), 256, 0, s>>>(x, positions, tokens, heads, headDim, theta, inverse, y);
  QK_LAUNCH_CHECK("ropeKernel");
}

}  // namespace qk
