// Packing helpers shared by the dense and the 4-bit GEMM front ends (gemm.cc, nf4_gemm.cc).
#pragma once
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace qlora {

// Packs rows [0, rows) x columns [0, kc) of a row-major f32 matrix (row stride ld) as one A sliver:
// dst[p * mr + i] = src[i * ld + p], rows rows..mr-1 zero. Full slivers of mr = 6 (the AVX2 micro-kernel)
// and mr = 12 (AVX-512) go through 8x8 register transposes on AVX2 CPUs (one contiguous run per 8
// columns instead of 8 * mr scalar strided stores: the scalar pack was ~0.5 ns per element, repeated
// once per N task); other shapes are scalar.
void pack_a_rows_f32(const float* src, int64_t ld, int64_t rows, int64_t kc, int mr, float* dst);

#if defined(__x86_64__)
// Columns p..p+7 of eight rows (row i at src + i * ld; rows past `rows` read as zero), transposed in
// registers: col[c] holds rows 0..7 of column p + c. Shared by the A packers here and the 4-bit B packer
// (nf4_gemm.cc).
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
#endif

}  // namespace qlora
