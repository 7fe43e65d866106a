// Rotary position embedding, Hugging Face "rotate_half" convention, on x [batch, seq, heads, d]:
// for i < d/2 the pair (x[i], x[i + d/2]) is rotated by angle pos · theta^(−2i/d); `inverse`
// rotates by −angle (the transpose, i.e. rope's backward). Angles and cos/sin are computed in
// double once per token, then applied in f32 to every head.
#include <cmath>
#include <cstdint>
#include <vector>

#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

// rope(x, positions, out, batch, seq, heads, headDim, theta, inverse)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  Args a(info, "rope");
  int64_t batch = a.count(3, "batch"), seq = a.count(4, "seq"), heads = a.count(5, "heads"), d = a.count(6, "headDim");
  double theta = a.number(7, "theta");
  bool inverse = a.boolean(8, "inverse");
  if (a.ok() && d % 2 != 0) a.fail_range("headDim", "even");
  if (a.ok() && !(theta > 0)) a.fail_range("theta", "positive");
  double n = static_cast<double>(batch) * seq * heads * d;
  const float* x = a.f32(0, "x", n);
  const int32_t* pos = a.i32(1, "positions", static_cast<double>(batch) * seq);
  float* out = a.f32(2, "out", n);
  if (!a.ok()) return a.env().Undefined();
  const int64_t half = d / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / d);
  const double sign = inverse ? -1.0 : 1.0;
  parallel_for(batch * seq, [&](size_t t0, size_t t1) {
    std::vector<float> c(half), s(half);
    for (size_t t = t0; t < t1; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        double ang = static_cast<double>(pos[t]) * inv_freq[i];
        c[i] = static_cast<float>(std::cos(ang));
        s[i] = static_cast<float>(sign * std::sin(ang));
      }
      for (int64_t h = 0; h < heads; ++h) {
        const float* xr = x + (t * heads + h) * d;
        float* o = out + (t * heads + h) * d;
        for (int64_t i = 0; i < half; ++i) {
          float x1 = xr[i], x2 = xr[i + half];
          o[i] = x1 * c[i] - x2 * s[i];
          o[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  }, static_cast<size_t>(std::max<int64_t>(1, 4096 / std::max<int64_t>(1, heads * d))));
  return a.env().Undefined();
}

Register reg_rope("rope", Rope);

}  // namespace
}  // namespace qlora
