// RMSNorm forward/backward over rows of length dim (f32). Row statistics accumulate in double so
// they match the reference (which sums JS numbers) to f32 rounding.
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

// Σ a[i]·b[i] in double with 4 independent lanes (vectorisable without reassociation flags).
double dot_d(const float* a, const float* b, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) acc[l] += static_cast<double>(a[i + l]) * b[i + l];
  for (; i < n; ++i) acc[0] += static_cast<double>(a[i]) * b[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

size_t row_grain(int64_t dim) { return static_cast<size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim))); }

// rmsNorm(x, weight, y, rstd, rows, dim, eps)
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Args a(info, "rmsNorm");
  int64_t rows = a.count(4, "rows"), dim = a.count(5, "dim");
  double eps = a.number(6, "eps");
  const float* x = a.f32(0, "x", static_cast<double>(rows) * dim);
  const float* w = a.f32(1, "weight", dim);
  float* y = a.f32(2, "y", static_cast<double>(rows) * dim);
  float* rstd = a.f32(3, "rstd", rows);
  if (!a.ok()) return a.env().Undefined();
  parallel_for(rows, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      float rs = static_cast<float>(1.0 / std::sqrt(dot_d(xr, xr, dim) / dim + eps));
      rstd[r] = rs;
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * rs * w[i];
    }
  }, row_grain(dim));
  return a.env().Undefined();
}

// rmsNormBackward(dy, x, weight, rstd, dx, dweight | null, rows, dim)
//   dx = r·(dy∘w) − r³/dim · x · Σ(dy∘w∘x);  dweight = Σ_rows dy∘x·r (skipped when dweight is null: a frozen weight)
Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  Args a(info, "rmsNormBackward");
  int64_t rows = a.count(6, "rows"), dim = a.count(7, "dim");
  double n = static_cast<double>(rows) * dim;
  const float* dy = a.f32(0, "dy", n);
  const float* x = a.f32(1, "x", n);
  const float* w = a.f32(2, "weight", dim);
  const float* rstd = a.f32(3, "rstd", rows);
  float* dx = a.f32(4, "dx", n);
  const bool want_dw = !a.is_null(5);
  float* dw = want_dw ? a.f32(5, "dweight", dim) : nullptr;
  if (!a.ok()) return a.env().Undefined();
  std::vector<double> dw_total(dim, 0.0);
  std::mutex merge;
  parallel_for(rows, [&](size_t r0, size_t r1) {
    std::vector<double> dw_part(want_dw ? dim : 0, 0.0);  // per chunk, merged once: no races on dweight
    std::vector<float> g(dim);
    for (size_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      const float* dyr = dy + r * dim;
      float* dxr = dx + r * dim;
      const double rs = rstd[r];
      for (int64_t i = 0; i < dim; ++i) g[i] = dyr[i] * w[i];
      const double c = dot_d(g.data(), xr, dim) * rs * rs * rs / dim;
      for (int64_t i = 0; i < dim; ++i) {
        dxr[i] = static_cast<float>(rs * g[i] - c * xr[i]);
      }
      if (want_dw)
        for (int64_t i = 0; i < dim; ++i) dw_part[i] += static_cast<double>(dyr[i]) * xr[i] * rs;
    }
    if (!want_dw) return;
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t i = 0; i < dim; ++i) dw_total[i] += dw_part[i];
  }, row_grain(dim));
  if (want_dw)
    for (int64_t i = 0; i < dim; ++i) dw[i] = static_cast<float>(dw_total[i]);
  return a.env().Undefined();
}

Register reg_rms("rmsNorm", RmsNorm);
Register reg_rms_bwd("rmsNormBackward", RmsNormBackward);

}  // namespace
}  // namespace qlora
