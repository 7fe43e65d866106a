// AVX512-BF16 GEMM path for bf16 x bf16 products: k-pair packers (plain baseline C++) and a 12 x 32
// micro-kernel built on vdpbf16ps (_mm512_dpbf16_ps), which does two bf16 multiply-adds per f32
// lane per instruction and reads half the packed bytes of the widening f32 path.
// Accuracy: a product of two bf16 values is exact in f32, so against f32 math on the same bf16
// values only the summation order differs. vdpbf16ps treats denormal inputs/outputs as zero
// (DAZ/FTZ); bf16 weights and activations in the normal range are unaffected.
// Reference: packages/tensor reference backend `matmul` (tests: test/gemm_bf16.test.ts).
#include "gemm_bf16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "gemm_kernels.h"
#if defined(__x86_64__)
#include "gemm_tile512.h"
#endif

namespace qlora {
namespace {

inline uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t{lo} | uint32_t{hi} << 16; }

// Packs `count` lines (rows of op(A) / columns of op(B)) x k range [p0, p0+kc) into slivers of `w`
// lines, each [ceil(kc/2)][w] words; lines past `count` and the odd last k are zero.
// Element (line, p) is data[line*ld + p] when k is contiguous, else data[p*ld + line].
void pack_pairs(const uint16_t* data, int64_t ld, bool k_contig, int64_t l0, int64_t count, int64_t p0, int64_t kc,
                int w, uint32_t* dst) {
  const int64_t kw = (kc + 1) / 2, full = kc / 2;
  for (int64_t s = 0; s < count; s += w, dst += w * kw) {
    const int64_t lines = std::min<int64_t>(w, count - s);
    if (lines < w) std::memset(dst, 0, sizeof(uint32_t) * w * kw);
    if (k_contig) {
      for (int64_t l = 0; l < lines; ++l) {
        const uint16_t* src = data + (l0 + s + l) * ld + p0;
        for (int64_t q = 0; q < full; ++q) dst[q * w + l] = pair(src[2 * q], src[2 * q + 1]);
        if (full < kw) dst[full * w + l] = pair(src[2 * full], 0);
      }
    } else {
      for (int64_t q = 0; q < kw; ++q) {
        const uint16_t* r0 = data + (p0 + 2 * q) * ld + l0 + s;
        const uint16_t* r1 = q < full ? r0 + ld : nullptr;
        for (int64_t l = 0; l < lines; ++l) dst[q * w + l] = pair(r0[l], r1 ? r1[l] : 0);
      }
    }
  }
}

#if defined(__x86_64__)
using tile512::kMr;
using tile512::kNr;

// Same register tile and structure as kernel_avx512 (gemm_kernels.cc): 24 accumulators, 2 B vectors
// (each 16 columns x one k-pair) and one broadcast A pair per row; kc steps of 2.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))) void kernel_avx512bf16(
    int64_t kc, const float* a_words, const float* b_words, float* c, int64_t ldc, bool accumulate) {
  const auto* a = reinterpret_cast<const uint32_t*>(a_words);
  const auto* b = reinterpret_cast<const uint32_t*>(b_words);
  tile512::prefetch_c(c, ldc);
  __m512 acc[kMr][2];
  tile512::zero(acc);
  for (int64_t q = 0, kw = (kc + 1) / 2; q < kw; ++q) {
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr), _MM_HINT_T0);
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMr; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
    a += kMr;
    b += kNr;
  }
  tile512::store_c(acc, c, ldc, accumulate);
}

// kc = 384 (even, so blocks split on pair boundaries) keeps the same bytes per panel as the f32
// kernel's kc = 192: B micro-panel 192 words x 32 x 4 B = 24 KiB (L1), A block 192 x 384 bf16 (L2).
const GemmKernel kAvx512Bf16{"avx512bf16", kMr, kNr, 12 * 16, 384, 4096, kernel_avx512bf16, 2};
#endif

}  // namespace

#if defined(__x86_64__)
const GemmKernel& avx512bf16_kernel() { return kAvx512Bf16; }
#else
// Never reached off x86 (isa().avx512bf16 is false, so gemm_bf16_kernel() returns nullptr).
const GemmKernel& avx512bf16_kernel() { std::abort(); }
#endif

// The driver's buffers are float*; the packed words are reinterpreted as such (the micro-kernel
// reads them back as uint32 words).
void Bf16PairA::pack(int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) const {
  pack_pairs(data, ld, !trans, i0, mc, p0, kc, mr, reinterpret_cast<uint32_t*>(dst));
}
void Bf16PairB::pack(int64_t p0, int64_t kc, int64_t j0, int64_t nc, int nr, float* dst) const {
  pack_pairs(data, ld, trans, j0, nc, p0, kc, nr, reinterpret_cast<uint32_t*>(dst));
}

}  // namespace qlora
