// See gemm_pack.h. Pure copies: the packed values are bit-identical whichever path runs.
#include "gemm_pack.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "isa.h"

namespace qlora {
namespace {

void pack_a_rows_scalar(const float* src, int64_t ld, int64_t rows, int64_t kc, int mr, float* dst) {
  if (rows < mr) std::memset(dst, 0, sizeof(float) * mr * kc);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t p = 0; p < kc; ++p) dst[p * mr + i] = src[i * ld + p];
}

#if defined(__x86_64__)
// Six full rows, mr = 6: per 8 columns, load 8 floats of each row (rows 6 and 7 are zero), transpose
// 8x8 in registers and store column p's 6 values at dst + 6p. Each 8-float store also writes two
// floats past its column; the next store overwrites them, and the last column group is stored
// 6 floats at a time so nothing past the sliver is touched.
__attribute__((target("avx2,fma"))) void pack_a_rows6_avx2(const float* src, int64_t ld, int64_t kc, float* dst) {
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 r0 = _mm256_loadu_ps(src + p), r1 = _mm256_loadu_ps(src + ld + p),
                 r2 = _mm256_loadu_ps(src + 2 * ld + p), r3 = _mm256_loadu_ps(src + 3 * ld + p),
                 r4 = _mm256_loadu_ps(src + 4 * ld + p), r5 = _mm256_loadu_ps(src + 5 * ld + p);
    // Round 1: interleave row pairs; round 2: 64-bit pairs -> per 128-bit lane, columns c (lane 0: c < 4).
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    // u_c03 = rows 0..3 of column c (lane 0) and c + 4 (lane 1); v_c = rows 4, 5, 0, 0.
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
    const __m256 v0 = _mm256_shuffle_ps(t4, zero, 0x44), v1 = _mm256_shuffle_ps(t4, zero, 0xee);
    const __m256 v2 = _mm256_shuffle_ps(t5, zero, 0x44), v3 = _mm256_shuffle_ps(t5, zero, 0xee);
    const __m256 u[4] = {u0, u1, u2, u3}, v[4] = {v0, v1, v2, v3};
    float* out = dst + p * 6;
    const bool last = p + 8 == kc;
    for (int c = 0; c < 8; ++c) {
      // column c: rows 0..3 from u[c % 4] lane c / 4, rows 4, 5 from v[c % 4] lane c / 4
      const __m128 lo = c < 4 ? _mm256_castps256_ps128(u[c]) : _mm256_extractf128_ps(u[c - 4], 1);
      const __m128 hi = c < 4 ? _mm256_castps256_ps128(v[c]) : _mm256_extractf128_ps(v[c - 4], 1);
      if (last && c == 7) {
        _mm_storeu_ps(out + 6 * c, lo);
        _mm_storel_pi(reinterpret_cast<__m64*>(out + 6 * c + 4), hi);
      } else {
        _mm256_storeu_ps(out + 6 * c, _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1));
      }
    }
  }
  for (; p < kc; ++p)
    for (int i = 0; i < 6; ++i) dst[p * 6 + i] = src[i * ld + p];
}

// Columns p..p+7 of eight rows (row i at src + i * ld; rows past `rows` read as zero), transposed:
// col[c] holds rows 0..7 of column p + c.
__attribute__((target("avx2,fma"), always_inline)) inline void transpose_8x8(const float* src, int64_t ld, int rows,
                                                                             int64_t p, __m256 (&col)[8]) {
  __m256 r[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_loadu_ps(src + i * ld + p) : _mm256_setzero_ps();
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  // Per 128-bit lane: u* = rows 0..3, v* = rows 4..7 of columns (0, 1, 2, 3) + 4 * lane.
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 v0 = _mm256_shuffle_ps(t4, t6, 0x44), v1 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 v2 = _mm256_shuffle_ps(t5, t7, 0x44), v3 = _mm256_shuffle_ps(t5, t7, 0xee);
  col[0] = _mm256_permute2f128_ps(u0, v0, 0x20), col[4] = _mm256_permute2f128_ps(u0, v0, 0x31);
  col[1] = _mm256_permute2f128_ps(u1, v1, 0x20), col[5] = _mm256_permute2f128_ps(u1, v1, 0x31);
  col[2] = _mm256_permute2f128_ps(u2, v2, 0x20), col[6] = _mm256_permute2f128_ps(u2, v2, 0x31);
  col[3] = _mm256_permute2f128_ps(u3, v3, 0x20), col[7] = _mm256_permute2f128_ps(u3, v3, 0x31);
}

// Twelve full rows, mr = 12 (the AVX-512 micro-kernel): per 8 columns, rows 0..7 and rows 8..11 go
// through one 8x8 transpose each; column c is then one 8-float and one 4-float store at dst + 12c.
// The scalar pack was ~10 % of a 2048^3 product's samples on Zen 4 (its 12 strided stores per column).
__attribute__((target("avx2,fma"))) void pack_a_rows12_avx2(const float* src, int64_t ld, int64_t kc, float* dst) {
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    __m256 top[8], bottom[8];
    transpose_8x8(src, ld, 8, p, top);
    transpose_8x8(src + 8 * ld, ld, 4, p, bottom);
    float* out = dst + p * 12;
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      _mm256_storeu_ps(out + 12 * c, top[c]);
      _mm_storeu_ps(out + 12 * c + 8, _mm256_castps256_ps128(bottom[c]));
    }
  }
  for (; p < kc; ++p)
    for (int i = 0; i < 12; ++i) dst[p * 12 + i] = src[i * ld + p];
}
#endif

}  // namespace

void pack_a_rows_f32(const float* src, int64_t ld, int64_t rows, int64_t kc, int mr, float* dst) {
#if defined(__x86_64__)
  if (mr == 6 && rows == 6 && isa().avx2_fma) return pack_a_rows6_avx2(src, ld, kc, dst);
  if (mr == 12 && rows == 12 && isa().avx2_fma) return pack_a_rows12_avx2(src, ld, kc, dst);
#endif
  pack_a_rows_scalar(src, ld, rows, kc, mr, dst);
}

}  // namespace qlora
