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
// Six full rows, mr = 6: per 8 columns, one 8x8 transpose (rows 6 and 7 zero) and column c's 6 values
// stored at dst + 6c. Each 8-float store also writes two floats past its column; the next store
// overwrites them, and the last column of the sliver is stored 6 floats at a time so nothing past the
// sliver is touched.
__attribute__((target("avx2,fma"))) void pack_a_rows6_avx2(const float* src, int64_t ld, int64_t kc, float* dst) {
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) {
    __m256 col[8];
    transpose_8x8(src, ld, 6, p, col);
    float* out = dst + p * 6;
    const bool last = p + 8 == kc;
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      if (last && c == 7) {
        _mm_storeu_ps(out + 6 * c, _mm256_castps256_ps128(col[c]));
        _mm_storel_pi(reinterpret_cast<__m64*>(out + 6 * c + 4), _mm256_extractf128_ps(col[c], 1));
      } else {
        _mm256_storeu_ps(out + 6 * c, col[c]);
      }
    }
  }
  for (; p < kc; ++p)
    for (int i = 0; i < 6; ++i) dst[p * 6 + i] = src[i * ld + p];
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
