// AdamW updates, in place. adamw32: torch.optim.AdamW (decay first, then the bias-corrected step;
// reference backend adamwStepInPlace). adamw8bit: bitsandbytes kOptimizerStatic8bit2StateBlockwise
// (spec §8.4): one CUDA block per 256 elements, states requantized with the signed/unsigned maps,
// decoupled decay applied AFTER the step (bitsandbytes' order, unlike torch). Bias-correction
// scalars are computed on the host in double (bitsandbytes uses __powf, so last-ulp differences).
#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__global__ void adamw32Kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                              float* __restrict__ v, int64_t n, float lr, float b1, float b2, float eps, float wd,
                              float stepSize, float sqrtBc2) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float grad = g[i];
    float param = p[i] * (1.0f - lr * wd);
    const float mi = b1 * m[i] + (1.0f - b1) * grad;
    const float vi = b2 * v[i] + (1.0f - b2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    param -= stepSize * mi / (sqrtf(vi) / sqrtBc2 + eps);
    p[i] = param;
  }
}

__device__ __forceinline__ uint8_t quantizeSorted(const float* c, float y) {
  int pivot = 127, lo = 0, hi = 255;
  float lower = -1.f, upper = 1.f, val = c[127];
  for (int step = 64; step >= 1; step >>= 1) {
    if (y > val) { lo = pivot; lower = val; pivot += step; }
    else { hi = pivot; upper = val; pivot -= step; }
    val = c[pivot];
  }
  if (hi == 255) upper = c[255];
  if (lo == 0) lower = c[0];
  if (y > val) return static_cast<uint8_t>(y > __fmul_rn(__fadd_rn(upper, val), 0.5f) ? hi : pivot);
  return static_cast<uint8_t>(y < __fmul_rn(__fadd_rn(lower, val), 0.5f) ? lo : pivot);
}

constexpr int kBlock8 = 256;

__global__ void __launch_bounds__(kBlock8) adamw8bitKernel(float* __restrict__ p, const float* __restrict__ g,
                                                           uint8_t* __restrict__ s1, uint8_t* __restrict__ s2,
                                                           float* __restrict__ absmax1, float* __restrict__ absmax2,
                                                           const float* __restrict__ qmap1, const float* __restrict__ qmap2,
                                                           int64_t n, float b1, float b2, float eps, float stepSize,
                                                           float c2, float decay) {
  __shared__ float q1[256], q2[256], scratch[32];
  q1[threadIdx.x] = qmap1[threadIdx.x];
  q2[threadIdx.x] = qmap2[threadIdx.x];
  __syncthreads();
  const int64_t blk = blockIdx.x;
  const int64_t i = blk * kBlock8 + threadIdx.x;
  const bool inRange = i < n;
  float grad = inRange ? g[i] : 0.f;
  const bool finite = isfinite(grad);
  float m = 0.f, v = 0.f;
  if (inRange && finite) {
    v = q2[s2[i]] * absmax2[blk];
    v = v * b2 + (1.0f - b2) * grad * grad;
    m = q1[s1[i]] * absmax1[blk];
    m = m * b1 + (1.0f - b1) * grad;
  }
  const float newMax1 = blockMax(fabsf(m), scratch);
  const float newMax2 = blockMax(fabsf(v), scratch);
  if (!inRange) return;
  if (threadIdx.x == 0) {
    absmax1[blk] = newMax1;
    absmax2[blk] = newMax2;
  }
  if (finite) {
    float param = p[i] + stepSize * (m / (sqrtf(v) + c2 * eps));
    if (decay != 1.0f) param *= decay;
    p[i] = param;
  }
  uint8_t c1 = quantizeSorted(q1, newMax1 > 0.f ? m / newMax1 : 0.f);
  // Sign fix (bitsandbytes): never let the stored first moment flip sign.
  if (signbit(q1[c1]) != signbit(m)) c1 = static_cast<uint8_t>(m > 0.f ? min(c1 + 1, 255) : max(c1 - 1, 0));
  s1[i] = c1;
  s2[i] = quantizeSorted(q2, newMax2 > 0.f ? v / newMax2 : 0.f);
}

}  // namespace

void adamw32(cudaStream_t s, float* param, const float* grad, float* m, float* v, int64_t n, const AdamW& o) {
  require(o.step >= 1, "adamw32: step must be ≥ 1 (1-based)");
  if (n <= 0) return;
  const double bc1 = 1.0 - std::pow(double(o.beta1), o.step), bc2 = 1.0 - std::pow(double(o.beta2), o.step);
  adamw32Kernel<<<gridFor(n, 256), 256, 0, s>>>(param, grad, m, v, n, o.lr, o.beta1, o.beta2, o.eps, o.weightDecay,
                                                float(o.lr / bc1), float(std::sqrt(bc2)));
  QK_LAUNCH_CHECK("adamw32Kernel");
}

void adamw8bit(cudaStream_t s, float* param, const float* grad, uint8_t* state1, uint8_t* state2, float* absmax1,
               float* absmax2, const float* qmap1, const float* qmap2, int64_t n, const AdamW& o) {
  require(o.step >= 1, "adamw8bit: step must be ≥ 1 (1-based)");
  if (n <= 0) return;
  const int64_t blocks = (n + kBlock8 - 1) / kBlock8;
  require(blocks <= INT32_MAX, "adamw8bit: too many blocks");
  const double c1 = 1.0 - std::pow(double(o.beta1), o.step);
  const double c2 = std::sqrt(1.0 - std::pow(double(o.beta2), o.step));
  const float stepSize = float(-double(o.lr) * c2 / c1);
  const float decay = o.weightDecay > 0.f ? float(1.0 - double(o.lr) * o.weightDecay) : 1.0f;
  adamw8bitKernel<<<unsigned(blocks), kBlock8, 0, s>>>(param, grad, state1, state2, absmax1, absmax2, qmap1, qmap2, n,
                                                       o.beta1, o.beta2, o.eps, stepSize, float(c2), decay);
  QK_LAUNCH_CHECK("adamw8bitKernel");
}

}  // namespace qk
