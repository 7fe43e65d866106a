// N-API entry of the fused LoRA rank-r accumulate (csrc/kernels/lora.cu): y[m,n] += scale · t[m,r] · op(B).
// Reached from the backend's matmul-with-accumulation (inner dimension ≤ 64, see src/lora-route.ts).
// Arguments are checked here before any launch; rows beyond one launch's grid limit go in row chunks.
#include <algorithm>

#include "../kernels/kernels.h"
#include "../runtime/device.h"
#include "../runtime/dtype.h"
#include "guard.h"
#include "registry.h"

namespace qn {
namespace {

constexpr int kMaxLoraRank = 64;              // the kernel's shared tiles hold r ≤ 64
constexpr int64_t kRowsPerLaunch = 65535 * 32;  // grid.y ≤ 65535 blocks of 32 rows

// loraAccumulate(t, b, dtype, bTransposed, m, n, r, scale, y)
//   t: [m, r]; b: [n, r] when bTransposed else [r, n]; both f32 (dtype 0) or both bf16 (dtype 2); y: f32 [m, n].
Napi::Value LoraAccumulate(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int dt = int(integer(info, 2, "dtype", 0, 5));
    qk::require(dt == qk::F32 || dt == qk::BF16, "loraAccumulate: dtype must be f32 (0) or bf16 (2), got " + std::to_string(dt));
    const bool bT = boolean(info, 3, "bTransposed");
    const int64_t m = integer(info, 4, "m", 0, INT32_MAX);
    const int n = int(integer(info, 5, "n", 0, INT32_MAX));
    const int r = int(integer(info, 6, "r", 1, kMaxLoraRank));
    const float scale = float(number(info, 7, "scale"));
    const int64_t es = int64_t(qk::dtypeSize(dt));
    const char* t = static_cast<const char*>(buffer(info, 0, m * r * es, "t").ptr);
    const void* b = buffer(info, 1, int64_t(n) * r * es, "b").ptr;
    float* y = static_cast<float*>(buffer(info, 8, m * n * 4, "y").ptr);
    cudaStream_t s = qk::Runtime::get().compute();
    for (int64_t row = 0; row < m; row += kRowsPerLaunch) {
      const int rows = int(std::min<int64_t>(kRowsPerLaunch, m - row));
      qk::loraAccumulate(s, t + row * r * es, b, dt, bT, rows, n, r, scale, y + row * n);
    }
    return info.Env().Undefined();
  });
}

qlora::Register reg("loraAccumulate", LoraAccumulate);

}  // namespace
}  // namespace qn
