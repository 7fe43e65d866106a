// GEMM micro-kernels. Each keeps the whole C tile in registers for the kc loop, broadcasts one
// element of A per row and multiplies it by NR/lanes vectors of B (outer-product formulation).
//   AVX-512: 12 x 32 -> 24 zmm accumulators + 2 B vectors + 1 broadcast (31 of 32 registers).
//   AVX2:     6 x 16 -> 12 ymm accumulators + 2 B vectors + 1 broadcast (15 of 16 registers).
//   portable: 4 x 8 plain C++ (the x86-64-v2 baseline; the compiler vectorises it with SSE).
#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "gemm_kernels.h"
#include "gemm_tile512.h"
#include "isa.h"

namespace qlora {
namespace {

constexpr int kMr512 = tile512::kMr, kNr512 = tile512::kNr;

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void kernel_avx512(int64_t kc, const float* a,
                                                                                  const float* b, float* c,
                                                                                  int64_t ldc, bool accumulate) {
  tile512::prefetch_c(c, ldc);
  __m512 acc[kMr512][2];
  tile512::zero(acc);
  for (int64_t p = 0; p < kc; ++p) {
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr512), _MM_HINT_T0);
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMr512; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr512;
    b += kNr512;
  }
  tile512::store_c(acc, c, ldc, accumulate);
}

constexpr int kMr256 = 6, kNr256 = 16;

__attribute__((target("avx2,fma"))) void kernel_avx2(int64_t kc, const float* a, const float* b, float* c,
                                                     int64_t ldc, bool accumulate) {
#pragma GCC unroll 6
  for (int i = 0; i < kMr256; ++i) {  // see kernel_avx512
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + 15), _MM_HINT_T0);
  }
  __m256 acc[kMr256][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMr256; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMr256; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr256;
    b += kNr256;
  }
#pragma GCC unroll 6
  for (int i = 0; i < kMr256; ++i) {
    float* row = c + i * ldc;
    if (accumulate) {
      acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_loadu_ps(row));
      acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_loadu_ps(row + 8));
    }
    _mm256_storeu_ps(row, acc[i][0]);
    _mm256_storeu_ps(row + 8, acc[i][1]);
  }
}

constexpr int kMrS = 4, kNrS = 8;

void kernel_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  float acc[kMrS][kNrS] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < kMrS; ++i)
      for (int j = 0; j < kNrS; ++j) acc[i][j] += a[i] * b[j];
    a += kMrS;
    b += kNrS;
  }
  for (int i = 0; i < kMrS; ++i)
    for (int j = 0; j < kNrS; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

const GemmKernel kAvx512{"avx512", kMr512, kNr512, 12 * 16, 192, 4096, kernel_avx512};
const GemmKernel kAvx2{"avx2", kMr256, kNr256, 6 * 24, 256, 4096, kernel_avx2};
const GemmKernel kPortable{"scalar", kMrS, kNrS, 4 * 32, 256, 4096, kernel_portable};

}  // namespace

const char* const* gemm_kernel_names() {
  static const char* const names[] = {kPortable.name, kAvx2.name, kAvx512.name, nullptr};
  return names;
}

const GemmKernel& gemm_kernel_for(const char* want) {
  const auto& i = isa();
  const bool any = want == nullptr || *want == '\0' || std::strcmp(want, "avx512bf16") == 0;
  if (i.avx512f && (any || std::strcmp(want, "avx512") == 0)) return kAvx512;
  if (i.avx2_fma && (any || std::strcmp(want, "avx512") == 0 || std::strcmp(want, "avx2") == 0)) return kAvx2;
  return kPortable;
}

namespace {
// The forced ISA cap: the f32 kernel, and whether the bf16 k-pair kernel may be used.
struct Choice {
  const GemmKernel* f32;
  bool bf16;
};
Choice choose(const char* want) {
  const bool any = want == nullptr || *want == '\0' || std::strcmp(want, "avx512bf16") == 0;
  return {&gemm_kernel_for(want), any && isa().avx512bf16};
}
Choice& current() {
  static Choice chosen = choose(std::getenv("QLORA_GEMM_ISA"));
  return chosen;
}
}  // namespace

const GemmKernel& gemm_kernel() { return *current().f32; }
const GemmKernel* gemm_bf16_kernel() { return current().bf16 ? &avx512bf16_kernel() : nullptr; }
void set_gemm_kernel(const char* isa) { current() = choose(isa); }

}  // namespace qlora
