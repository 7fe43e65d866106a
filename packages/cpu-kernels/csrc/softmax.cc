// Row-wise softmax forward/backward (f32). Forward subtracts the row max before exp (stable);
// backward: dx = y ∘ (dy − Σ dy∘y).
#include <algorithm>
#include <cstdint>

#include "elementwise_vec.h"
#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

size_t row_grain(int64_t n) { return static_cast<size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n))); }

// softmax(x, y, rows, n)
Napi::Value Softmax(const Napi::CallbackInfo& info) {
  Args a(info, "softmax");
  int64_t rows = a.count(2, "rows"), n = a.count(3, "n");
  const float* x = a.f32(0, "x", static_cast<double>(rows) * n);
  float* y = a.f32(1, "y", static_cast<double>(rows) * n);
  if (!a.ok() || n == 0) return a.env().Undefined();
  const VecOps& v = vecops();
  parallel_for(rows, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* xr = x + r * n;
      float* yr = y + r * n;
      float inv = 1.0f / v.exp_sum(xr, yr, n, v.max(xr, n));
      for (int64_t i = 0; i < n; ++i) yr[i] *= inv;
    }
  }, row_grain(n));
  return a.env().Undefined();
}

// softmaxBackward(dy, y, dx, rows, n)
Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  Args a(info, "softmaxBackward");
  int64_t rows = a.count(3, "rows"), n = a.count(4, "n");
  double total = static_cast<double>(rows) * n;
  const float* dy = a.f32(0, "dy", total);
  const float* y = a.f32(1, "y", total);
  float* dx = a.f32(2, "dx", total);
  if (!a.ok()) return a.env().Undefined();
  parallel_for(rows, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* g = dy + r * n;
      const float* yr = y + r * n;
      double acc[4] = {0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; ++l) acc[l] += static_cast<double>(g[i + l]) * yr[i + l];
      for (; i < n; ++i) acc[0] += static_cast<double>(g[i]) * yr[i];
      const float dot = static_cast<float>((acc[0] + acc[1]) + (acc[2] + acc[3]));
      for (int64_t j = 0; j < n; ++j) dx[r * n + j] = yr[j] * (g[j] - dot);
    }
  }, row_grain(n));
  return a.env().Undefined();
}

Register reg_softmax("softmax", Softmax);
Register reg_softmax_bwd("softmaxBackward", SoftmaxBackward);

}  // namespace
}  // namespace qlora
