// AdamW step in place (torch.optim.AdamW semantics):
//   p −= lr·wd·p;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;
//   p −= lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)
// Each element is computed in double with param, m and v rounded to f32 at the same points as the
// reference (packages/tensor reference backend). grad may be f32 or bf16.
#include <cmath>
#include <cstdint>

#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

template <typename G>
void adamw_range(float* p, const G* g, float* m, float* v, size_t i0, size_t i1, double b1, double b2,
                 double eps, double decay, double step_size, double bc2_sqrt) {
  for (size_t i = i0; i < i1; ++i) {
    double gi;
    if constexpr (sizeof(G) == 2) gi = bf16_to_f32(g[i]); else gi = g[i];
    float pd = static_cast<float>(p[i] * decay);
    m[i] = static_cast<float>(b1 * m[i] + (1.0 - b1) * gi);
    v[i] = static_cast<float>(b2 * v[i] + (1.0 - b2) * gi * gi);
    double denom = std::sqrt(static_cast<double>(v[i])) / bc2_sqrt + eps;
    p[i] = static_cast<float>(pd - step_size * m[i] / denom);
  }
}

// adamwStep(param, grad, m, v, length, lr, beta1, beta2, eps, weightDecay, step, gradIsBf16)
Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  Args a(info, "adamwStep");
  int64_t n = a.count(4, "length");
  float* p = a.f32(0, "param", n);
  const bool bf16 = a.boolean(11, "gradIsBf16");
  const float* g = bf16 ? nullptr : a.f32(1, "grad", n);
  const uint16_t* gb = bf16 ? a.u16(1, "grad", n) : nullptr;
  float* m = a.f32(2, "m", n);
  float* v = a.f32(3, "v", n);
  const double lr = a.number(5, "lr"), b1 = a.number(6, "beta1"), b2 = a.number(7, "beta2");
  const double eps = a.number(8, "eps"), wd = a.number(9, "weightDecay");
  const int64_t step = a.count(10, "step");
  if (a.ok() && step < 1) a.fail_range("step", "a 1-based step count");
  if (!a.ok()) return a.env().Undefined();
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(step));
  const double decay = 1.0 - lr * wd, step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2);
  parallel_for(n, [&](size_t i0, size_t i1) {
    if (bf16) adamw_range(p, gb, m, v, i0, i1, b1, b2, eps, decay, step_size, bc2_sqrt);
    else adamw_range(p, g, m, v, i0, i1, b1, b2, eps, decay, step_size, bc2_sqrt);
  }, 1 << 14);
  return a.env().Undefined();
}

Register reg_adamw("adamwStep", AdamwStep);

}  // namespace
}  // namespace qlora
