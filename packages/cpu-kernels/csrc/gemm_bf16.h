// Packers for the AVX512-BF16 GEMM path (bf16 x bf16 -> f32). vdpbf16ps multiplies bf16 pairs
// lane by lane, so each packed 32-bit word holds two consecutive-k bf16 values (low half = even k):
//   A sliver: [ceil(kc/2)][mr] words,   B panel: [ceil(kc/2)][nr] words.
// An odd kc pads its last pair with +0 (contributes 0 * x = 0). The driver only starts kc blocks at
// multiples of the (even) kernel kc, so pairs never straddle blocks.
#pragma once
#include <cstdint>

#include "gemm_driver.h"

namespace qlora {

// op(A) as [m x k]: A stored [m, k] (ld = k) or, transposed, [k, m] (ld = m).
struct Bf16PairA final : APacker {
  const uint16_t* data;
  int64_t ld;
  bool trans;
  Bf16PairA(const uint16_t* d, int64_t l, bool t) : data(d), ld(l), trans(t) {}
  void pack(int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) const override;
};

// op(B) as [k x n]: B stored [k, n] (ld = n) or, transposed, [n, k] (ld = k).
struct Bf16PairB final : BPacker {
  const uint16_t* data;
  int64_t ld;
  bool trans;
  Bf16PairB(const uint16_t* d, int64_t l, bool t) : data(d), ld(l), trans(t) {}
  void pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const override;
};

}  // namespace qlora
