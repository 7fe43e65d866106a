// Dropout masks from the Philox-4x32-10 stream of @qlora/tensor's Generator (src/random.ts holds the contract and
// the reference): element e of (seed) is word e mod 4 of block floor(e/4) with key (seed lo, seed hi), its uniform
// is (word >> 8)·2^-24, and the mask is `scale` where that uniform ≥ p, else 0. Counter based, so blocks are split
// over the pool's threads and the result does not depend on the thread count.
#include <cmath>
#include <cstdint>
#include <string>

#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
constexpr size_t kGrainBlocks = 1 << 12;

inline void philox_block(uint64_t block, uint32_t key0, uint32_t key1, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = key0, k1 = key1;
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// A non-negative integer below 2^53 (the Generator's seeds and offsets are JS safe integers; count() stops at 9e15).
int64_t safe_integer(Args& a, size_t i, const char* name) {
  const double v = a.number(i, name);
  if (a.ok() && !(v >= 0 && v == std::floor(v) && v <= 9007199254740991.0)) {
    Napi::RangeError::New(a.env(), std::string("dropoutMask: ") + name + " must be a non-negative integer below 2^53")
        .ThrowAsJavaScriptException();
    return -1;
  }
  return static_cast<int64_t>(v);
}

// dropoutMask(seed, offset, p, scale, out, length): seed and offset (block aligned) are integers below 2^53.
Napi::Value DropoutMask(const Napi::CallbackInfo& info) {
  Args a(info, "dropoutMask");
  const int64_t seed = safe_integer(a, 0, "seed");
  const int64_t offset = safe_integer(a, 1, "offset");
  const double p = a.number(2, "p");
  const float scale = static_cast<float>(a.number(3, "scale"));
  const int64_t n = a.count(5, "length");
  float* out = a.f32(4, "out", static_cast<double>(n));
  if (!a.ok() || seed < 0 || offset < 0) return a.env().Undefined();
  if (offset % 4 != 0) {
    Napi::RangeError::New(a.env(), "dropoutMask: offset must be a multiple of 4 (block aligned)")
        .ThrowAsJavaScriptException();
    return a.env().Undefined();
  }
  const uint32_t key0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  const uint32_t key1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  const uint64_t first = static_cast<uint64_t>(offset) / 4;
  const size_t blocks = static_cast<size_t>((n + 3) / 4);
  parallel_for(
      blocks,
      [&](size_t b, size_t e) {
        uint32_t w[4];
        for (size_t blk = b; blk < e; blk++) {
          philox_block(first + blk, key0, key1, w);
          for (int j = 0; j < 4; j++) {
            const int64_t i = static_cast<int64_t>(blk) * 4 + j;
            if (i >= n) break;
            // the same comparison as the reference: a uniform that is exact in f32 against p in double
            const double u = static_cast<double>(w[j] >> 8) * (1.0 / 16777216.0);
            out[i] = u >= p ? scale : 0.0f;
          }
        }
      },
      kGrainBlocks);
  return a.env().Undefined();
}

Register reg_dropout_mask("dropoutMask", DropoutMask);

}  // namespace
}  // namespace qlora
