// The 12 x 32 f32 C tile of the AVX-512 GEMM micro-kernels (kernel_avx512 in gemm_kernels.cc,
// kernel_avx512bf16 in gemm_bf16.cc): 24 zmm accumulators, C prefetched before the k loop and read
// once after it. The kernels differ only in their k loop (f32 FMA vs bf16 pair dot products).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace qlora {
namespace tile512 {

constexpr int kMr = 12, kNr = 32;

// C is only touched after the kc loop, and for large C its lines have left the caches since the
// previous kc block: start fetching them now so the final load/add/store does not stall.
__attribute__((target("avx512f"), always_inline)) inline void prefetch_c(const float* c, int64_t ldc) {
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 31), _MM_HINT_T0);
  }
}

__attribute__((target("avx512f"), always_inline)) inline void zero(__m512 (&acc)[kMr][2]) {
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
}

// C (=|+=) acc, rows ldc floats apart.
__attribute__((target("avx512f"), always_inline)) inline void store_c(__m512 (&acc)[kMr][2], float* c, int64_t ldc,
                                                                     bool accumulate) {
#pragma GCC unroll 12
  for (int i = 0; i < kMr; ++i) {
    float* row = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_loadu_ps(row));
      acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_loadu_ps(row + 16));
    }
    _mm512_storeu_ps(row, acc[i][0]);
    _mm512_storeu_ps(row + 16, acc[i][1]);
  }
}

}  // namespace tile512
}  // namespace qlora
