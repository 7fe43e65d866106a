// GEMM micro-kernels. Each keeps the whole C tile in registers for the kc loop, broadcasts one
// element of A per row and multiplies it by NR/lanes vectors of B (outer-product formulation).
//   AVX-512: 12 x 32 -> 24 zmm accumulators + 2 B vectors + 1 broadcast (31 of 32 registers).
//   AVX2:     6 x 16 -> 12 ymm accumulators + 2 B vectors + 1 broadcast (15 of 16 registers).
//   NEON:     8 x 12 -> 24 q-register accumulators + 3 B vectors + 2 A vectors (29 of 32; arm64 only).
//   portable: 4 x 8 plain C++ (the floor; the compiler vectorises it with SSE / NEON).
#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include <cstdlib>
#include <cstring>

#include "gemm_kernels.h"
#if defined(__x86_64__)
#include "gemm_tile512.h"
#endif
#include "isa.h"

namespace qlora {
namespace {

#if defined(__x86_64__)
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
  // Prefetch the C rows of the tile the driver computes next (6 rows down: the ir loop), one row per
  // 32 k steps, instead of this tile's rows at entry: the C block misses to DRAM when m x n is large,
  // and a whole kernel call of lead hides that where the entry prefetch did not (quiet 2048³ single
  // thread: median 84.9 -> 89.3 GFLOPS over 25 interleaved runs; OpenBLAS 93.8). A wrong guess at the
  // end of an ir loop costs one useless prefetch (prefetches never fault). Short k panels, which the driver walks
  // along C rows instead (kShortPanel), issue one such prefetch per 32 k steps: the next strip's rows, early.
  const float* c_next = c + kMr256 * ldc;
  __m256 acc[kMr256][2];
#pragma GCC unroll 6
  for (int i = 0; i < kMr256; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  const auto step = [&]() __attribute__((always_inline, target("avx2,fma"))) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMr256; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += kMr256;
    b += kNr256;
  };
  int64_t p = 0;
  for (; p + 4 <= kc; p += 4) {
    if ((p & 31) == 0 && p < 32 * kMr256) {
      const float* row = c_next + (p >> 5) * ldc;
      _mm_prefetch(reinterpret_cast<const char*>(row), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(row + 15), _MM_HINT_T0);
    }
    // The A sliver streams from L2 once per call; 16 k steps (384 bytes) ahead keeps its next lines in L1
    // (ab-builds.ts, one thread: NF4 2048x4096x4096 1.015-1.017, 1024x2048x5632 1.009-1.017, f32 2048^3
    // 1.005-1.009; two threads 1.00-1.009).
    _mm_prefetch(reinterpret_cast<const char*>(a + 16 * kMr256), _MM_HINT_T0);
    step();
    step();
    step();
    step();
  }
  for (; p < kc; ++p) step();
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

#endif  // __x86_64__

#if defined(__aarch64__)
constexpr int kMrNeon = 8, kNrNeon = 12;

// A sliver of 8 rows is two q registers; each k step multiplies 3 B vectors by the 8 A lanes
// (vfmaq_laneq_f32: the A broadcast is free).
void kernel_neon(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool accumulate) {
  float32x4_t acc[kMrNeon][3];
  for (int i = 0; i < kMrNeon; ++i) acc[i][0] = acc[i][1] = acc[i][2] = vdupq_n_f32(0.0f);
  for (int64_t p = 0; p < kc; ++p) {
    const float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
#define QLORA_NEON_ROW(i, av, lane)                        \
  acc[i][0] = vfmaq_laneq_f32(acc[i][0], b0, av, lane);    \
  acc[i][1] = vfmaq_laneq_f32(acc[i][1], b1, av, lane);    \
  acc[i][2] = vfmaq_laneq_f32(acc[i][2], b2, av, lane);
    QLORA_NEON_ROW(0, a0, 0) QLORA_NEON_ROW(1, a0, 1) QLORA_NEON_ROW(2, a0, 2) QLORA_NEON_ROW(3, a0, 3)
    QLORA_NEON_ROW(4, a1, 0) QLORA_NEON_ROW(5, a1, 1) QLORA_NEON_ROW(6, a1, 2) QLORA_NEON_ROW(7, a1, 3)
#undef QLORA_NEON_ROW
    a += kMrNeon;
    b += kNrNeon;
  }
  for (int i = 0; i < kMrNeon; ++i) {
    float* row = c + i * ldc;
    for (int v = 0; v < 3; ++v) {
      if (accumulate) acc[i][v] = vaddq_f32(acc[i][v], vld1q_f32(row + 4 * v));
      vst1q_f32(row + 4 * v, acc[i][v]);
    }
  }
}
#endif  // __aarch64__

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

#if defined(__x86_64__)
const GemmKernel kAvx512{"avx512", kMr512, kNr512, 12 * 16, 192, 4096, kernel_avx512};
const GemmKernel kAvx2{"avx2", kMr256, kNr256, 6 * 24, 256, 4096, kernel_avx2};
#endif
#if defined(__aarch64__)
// A block 128 x 256 floats = 128 KiB (L2), B micro-panel 256 x 12 floats = 12 KiB (L1).
const GemmKernel kNeon{"neon", kMrNeon, kNrNeon, 8 * 16, 256, 4096, kernel_neon};
#endif
const GemmKernel kPortable{"scalar", kMrS, kNrS, 4 * 32, 256, 4096, kernel_portable};

}  // namespace

const char* const* gemm_kernel_names() {
#if defined(__x86_64__)
  static const char* const names[] = {kPortable.name, kAvx2.name, kAvx512.name, nullptr};
#elif defined(__aarch64__)
  static const char* const names[] = {kPortable.name, kNeon.name, nullptr};
#else
  static const char* const names[] = {kPortable.name, nullptr};
#endif
  return names;
}

namespace {
bool asks_for(const char* want, const char* isa) { return want != nullptr && std::strcmp(want, isa) == 0; }
bool asks_for_best(const char* want) { return want == nullptr || *want == '\0' || asks_for(want, "avx512bf16"); }

// The widest f32 kernel the request allows on this CPU.
const GemmKernel& widest_kernel(const char* want) {
#if defined(__x86_64__)
  const auto& i = isa();
  if (i.avx512f && (asks_for_best(want) || asks_for(want, "avx512"))) return kAvx512;
  if (i.avx2_fma && (asks_for_best(want) || asks_for(want, "avx512") || asks_for(want, "avx2"))) return kAvx2;
#elif defined(__aarch64__)
  // NEON is baseline on arm64: every request but "scalar" gets it (x86 names included, as their best fallback).
  if (!asks_for(want, "scalar")) return kNeon;
#endif
  return kPortable;
}
}  // namespace

const GemmKernel& gemm_kernel_for(const char* want) {
  const GemmKernel& widest = widest_kernel(want);
#if defined(__x86_64__)
  // Unless AVX-512 is asked for by name, Zen 4 runs the 6 x 16 AVX2 tile: its 512-bit FMAs run at half
  // rate, so the 12 x 32 tile has no more FMA throughput, and inside the GEMM it measured slower (other
  // kc/mc/prefetch settings did not change that). Zen 4, one and two threads, AVX2 tile vs AVX-512 tile:
  // f32 2048^3 1.08x, 4096x1024x4096 1.11x, NF4 2048x4096x4096 1.11x and its input grad 1.08-1.10x,
  // 512^3 1.01-1.02x; small products within +-8 % either way (BENCHMARKS.md).
  if (&widest == &kAvx512 && !asks_for(want, "avx512") && isa().avx512_half_rate) return kAvx2;
#endif
  return widest;
}

namespace {
// The request in force: the f32 micro-kernel, the widest kernel it allows, and whether the bf16
// k-pair kernel may be used.
struct Choice {
  const GemmKernel* f32;
  const GemmKernel* widest;
  bool bf16;
};
Choice choose(const char* want) {
  return {&gemm_kernel_for(want), &widest_kernel(want), asks_for_best(want) && isa().avx512bf16};
}
Choice& current() {
  static Choice chosen = choose(std::getenv("QLORA_GEMM_ISA"));
  return chosen;
}
}  // namespace

const GemmKernel& gemm_kernel() { return *current().f32; }
const char* gemm_isa_cap() { return current().widest->name; }
const GemmKernel* gemm_bf16_kernel() { return current().bf16 ? &avx512bf16_kernel() : nullptr; }
void set_gemm_kernel(const char* isa) { current() = choose(isa); }

}  // namespace qlora
