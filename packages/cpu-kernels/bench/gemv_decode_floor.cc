// How fast can AVX2 turn packed NF4 codes into exact f32 weights on this CPU, with no memory traffic and no
// arithmetic? A floor for any exact 4-bit GEMV: the dot product's FMAs and the weight's bytes come on top.
// Built and run by bench/decode-floor.ts (g++ -O3 -mavx2 -mfma -I../csrc); prints one JSON line.
//   byte_planes: the decode of nf4_gemv.cc's rows_avx2_wide without its FMAs: per 32 packed bytes (64 weights)
//                a nibble split, 8 vpshufb lookups of the LUT's byte planes and 16 unpacks to rebuild floats.
//   lookups_only: the 8 vpshufb lookups alone (bytes, not floats): what any byte-plane scheme must pay.
//   gather: 64-bit vpgatherdq from a 256-entry table of float pairs (one packed byte -> its two weights).
//   shuffle_fma_per_cycle: independent vpshufb and vfmadd231ps, alternating, retired per cycle (4 if the shuffles
//                and the FMAs had pipes of their own; Zen 3 shares one between them).
//   clock_ghz: a chain of dependent adds (one per cycle), to turn times into cycles.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "nf4_format.h"  // the NF4 table the kernels use (header-only part)

namespace {

constexpr int64_t kBytes = 16384;  // 32768 weights: codes stay in L1
constexpr int kCalls = 64, kReps = 41;

template <class F>
double best_ns_per_64_weights(F run) {
  double best = 1e30;
  for (int r = 0; r < kReps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int c = 0; c < kCalls; ++c) run();
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    best = ns < best ? ns : best;
  }
  return best / kCalls / (kBytes / 32);
}

struct Planes {
  __m256i t0, t1, t2, t3;
};

Planes lut_planes() {
  alignas(32) uint8_t p[4][32];
  const auto* bytes = reinterpret_cast<const uint8_t*>(qlora::nf4_lut());
  for (int q = 0; q < 4; ++q)
    for (int i = 0; i < 32; ++i) p[q][i] = bytes[(i & 15) * 4 + q];
  const auto* v = reinterpret_cast<const __m256i*>(p);
  return {_mm256_load_si256(v), _mm256_load_si256(v + 1), _mm256_load_si256(v + 2), _mm256_load_si256(v + 3)};
}

template <bool kRebuildFloats>
__attribute__((noinline)) __m256i decode(const uint8_t* codes, const Planes& t) {
  const __m256i nib = _mm256_set1_epi8(0x0f);
  __m256i acc[4] = {};
  for (int64_t i = 0; i < kBytes; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i));
    const __m256i idx[2] = {_mm256_and_si256(_mm256_srli_epi16(v, 4), nib), _mm256_and_si256(v, nib)};
    for (int h = 0; h < 2; ++h) {
      const __m256i b0 = _mm256_shuffle_epi8(t.t0, idx[h]), b1 = _mm256_shuffle_epi8(t.t1, idx[h]);
      const __m256i b2 = _mm256_shuffle_epi8(t.t2, idx[h]), b3 = _mm256_shuffle_epi8(t.t3, idx[h]);
      if (kRebuildFloats) {
        const __m256i w01l = _mm256_unpacklo_epi8(b0, b1), w01h = _mm256_unpackhi_epi8(b0, b1);
        const __m256i w23l = _mm256_unpacklo_epi8(b2, b3), w23h = _mm256_unpackhi_epi8(b2, b3);
        acc[0] = _mm256_xor_si256(acc[0], _mm256_unpacklo_epi16(w01l, w23l));
        acc[1] = _mm256_xor_si256(acc[1], _mm256_unpackhi_epi16(w01l, w23l));
        acc[2] = _mm256_xor_si256(acc[2], _mm256_unpacklo_epi16(w01h, w23h));
        acc[3] = _mm256_xor_si256(acc[3], _mm256_unpackhi_epi16(w01h, w23h));
      } else {
        acc[0] = _mm256_xor_si256(acc[0], b0), acc[1] = _mm256_xor_si256(acc[1], b1);
        acc[2] = _mm256_xor_si256(acc[2], b2), acc[3] = _mm256_xor_si256(acc[3], b3);
      }
    }
  }
  return _mm256_xor_si256(_mm256_xor_si256(acc[0], acc[1]), _mm256_xor_si256(acc[2], acc[3]));
}

__attribute__((noinline)) __m256i gather_pairs(const uint8_t* codes, const long long* pairs) {
  __m256i acc[4] = {};
  for (int64_t i = 0; i < kBytes; i += 16)
    for (int q = 0; q < 4; ++q) {
      int32_t four;
      __builtin_memcpy(&four, codes + i + 4 * q, 4);
      const __m128i idx = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(four));
      acc[q] = _mm256_xor_si256(acc[q], _mm256_i32gather_epi64(pairs, idx, 8));
    }
  return _mm256_xor_si256(_mm256_xor_si256(acc[0], acc[1]), _mm256_xor_si256(acc[2], acc[3]));
}

// 16 independent instructions per iteration: 8 vpshufb and 8 vfmadd231ps, each FMA into its own accumulator
// (one FMA per chain per iteration, so the FMA latency never binds). Instructions per ns.
double shuffle_fma_per_ns() {
  constexpr int64_t kIters = 20000000;
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < kIters; ++i)
      __asm__ volatile(
          "vpshufb %%ymm14, %%ymm15, %%ymm8\n vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm9\n vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm10\n vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm11\n vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm12\n vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm13\n vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm8\n vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n"
          "vpshufb %%ymm14, %%ymm15, %%ymm9\n vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n" ::
              : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
                "xmm12", "xmm13");
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    best = ns < best ? ns : best;
  }
  return 16.0 * kIters / best;
}

double clock_ghz() {
  constexpr int64_t kAdds = 400000000;
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    int64_t x = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < kAdds; ++i) __asm__ volatile("add $1, %0" : "+r"(x));
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    best = ns < best ? ns : best;
  }
  return kAdds / best;
}

}  // namespace

int main() {
  std::vector<uint8_t> codes(kBytes);
  uint32_t s = 12345;
  for (auto& c : codes) c = static_cast<uint8_t>((s = s * 1664525u + 1013904223u) >> 24);
  std::vector<long long> pairs(256);
  for (int i = 0; i < 256; ++i) pairs[i] = i * 0x100000001LL;
  const Planes t = lut_planes();
  volatile int sink = 0;
  const double planes = best_ns_per_64_weights([&] { sink = sink + _mm256_extract_epi32(decode<true>(codes.data(), t), 0); });
  const double lookups = best_ns_per_64_weights([&] { sink = sink + _mm256_extract_epi32(decode<false>(codes.data(), t), 0); });
  const double gather = best_ns_per_64_weights([&] { sink = sink + _mm256_extract_epi32(gather_pairs(codes.data(), pairs.data()), 0); });
  const double ghz = clock_ghz(), mixed = shuffle_fma_per_ns() / ghz;
  std::printf(
      "{\"clock_ghz\":%.3f,\"shuffle_fma_per_cycle\":%.2f,\"ns_per_64_weights\":{\"byte_planes\":%.3f,"
      "\"lookups_only\":%.3f,\"gather\":%.3f}}\n",
      ghz, mixed, planes, lookups, gather);
  return 0;
}
