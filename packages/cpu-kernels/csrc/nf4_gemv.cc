// 4-bit GEMV. W row j occupies bytes [j*k/2, (j+1)*k/2) and, because k % blocksize == 0, whole
// blocks. Byte t of a row holds columns 2t (high nibble) and 2t+1 (low nibble), so instead of
// interleaving decoded nibbles we split x once into even/odd columns (xe, xo) and compute
//   y[j] = sum_blocks absmax[b] * (sum LUT[hi] * xe + sum LUT[lo] * xo)
// The 16-entry LUT is one zmm (vpermps) on AVX-512; AVX2 looks up the LUT's four byte planes with vpshufb
// (rows_avx2_shuffle, x reordered to match instead of split). Per-block scaling of
// the partial sum instead of each weight reassociates one multiply (error ~1 ulp of the block sum).
// arm64: the LUT is a 64-byte vqtbl4q_u8 table (each code expanded to its 4 float bytes), 32 weights
// per 16 packed bytes; blocksize % 32.
#include "nf4_gemv.h"

// GCC 12 reports its own _mm512_undefined_* helpers inside immintrin.h as uninitialised (a known
// false positive); silence only that.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include <algorithm>
#include <atomic>
#include <string_view>
#include <vector>

#include "gemm_kernels.h"

#include "isa.h"
#include "pool.h"

namespace qlora {
namespace {

#if defined(__x86_64__)
template <int M, int BPB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void rows_avx512(const Quant4& q, const float* xe,
                                                                                 const float* xo, int64_t j0,
                                                                                 int64_t j1, float* y) {
  const __m512 lut = _mm512_loadu_ps(q.lut);
  // BPB > 0: bytes per block known at compile time (blocksize 64 -> 32), so the block loop unrolls.
  const int64_t half = q.k / 2, bytes_per_block = BPB > 0 ? BPB : q.blocksize / 2, blocks_per_row = q.k / q.blocksize;
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = q.codes + j * half;
    __m512 tot[M];
    for (int i = 0; i < M; ++i) tot[i] = _mm512_setzero_ps();
    AbsmaxCursor absmax(q, j * blocks_per_row);
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      __m512 se[M], so[M];
      for (int i = 0; i < M; ++i) se[i] = so[i] = _mm512_setzero_ps();
      const int64_t t0 = b * bytes_per_block;
      for (int64_t t = t0; t < t0 + bytes_per_block; t += 16) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + t)));
        const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
        const __m512 wl = _mm512_permutexvar_ps(v, lut);  // vpermps reads only index bits 3:0
        for (int i = 0; i < M; ++i) {
          se[i] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xe + i * half + t), se[i]);
          so[i] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xo + i * half + t), so[i]);
        }
      }
      const __m512 scale = _mm512_set1_ps(absmax.next());
      for (int i = 0; i < M; ++i) tot[i] = _mm512_fmadd_ps(_mm512_add_ps(se[i], so[i]), scale, tot[i]);
    }
    for (int i = 0; i < M; ++i) y[i * q.n + j] = _mm512_reduce_add_ps(tot[i]);
  }
}

__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The four byte planes of the 16-entry LUT of floats, each repeated in both 128-bit lanes: vpshufb tables
// that turn 4-bit codes into byte p of their float (p = 0..3), for the shuffle kernels below.
struct LutPlanes {
  __m256i t0, t1, t2, t3;
};
__attribute__((target("avx2"))) inline LutPlanes lut_byte_planes(const Quant4& q) {
  alignas(32) uint8_t planes[4][32];
  const auto* lut_bytes = reinterpret_cast<const uint8_t*>(q.lut);
  for (int p = 0; p < 4; ++p)
    for (int i = 0; i < 32; ++i) planes[p][i] = lut_bytes[(i & 15) * 4 + p];
  const auto* v = reinterpret_cast<const __m256i*>(planes);
  return {_mm256_load_si256(v), _mm256_load_si256(v + 1), _mm256_load_si256(v + 2), _mm256_load_si256(v + 3)};
}

// AVX2 with byte shuffles instead of vpermps: the former AVX2 path (two vpermps + blend per 8 weights, like
// the AVX-512 one) was bound by vpermps on Zen 3 at ~8 cycles per 16 weights (0.17 ns/weight single-threaded,
// the same with the weight in L2 or in DRAM); this one measured 0.12 ns/weight on the same machine.
// 16 packed bytes -> idx = [high nibbles | low nibbles] (one ymm, 32 codes); four vpshufb look up the
// four byte planes of the LUT floats, and two rounds of unpack (lane-local) rebuild the floats:
//   f[n] lane 0 = LUT[hi(t + 4n + i)], lane 1 = LUT[lo(t + 4n + i)], i < 4
// i.e. columns 2u (lane 0) and 2u + 1 (lane 1) for bytes u = t + 4n .. t + 4n + 3. x is reordered once
// per call to match (xq: per 8 columns, the 4 even ones then the 4 odd ones), so f[n] multiplies the
// 8 contiguous floats xq[2t + 8n ..]. blocksize % 32 == 0 (16 bytes per step).
template <int M>
__attribute__((target("avx2,fma"))) void rows_avx2_shuffle(const Quant4& q, const float* xq, const float*, int64_t j0,
                                                           int64_t j1, float* y) {
  const auto [t0, t1, t2, t3] = lut_byte_planes(q);
  const __m128i nib = _mm_set1_epi8(0x0f);
  constexpr int NA = M == 1 ? 4 : 2;  // accumulators per row: keeps the FMA chains off the critical path
  const int64_t half = q.k / 2, bytes_per_block = q.blocksize / 2, blocks_per_row = q.k / q.blocksize;
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = q.codes + j * half;
    __m256 tot[M];
    for (int i = 0; i < M; ++i) tot[i] = _mm256_setzero_ps();
    AbsmaxCursor absmax(q, j * blocks_per_row);
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      __m256 acc[M][NA];
      for (int i = 0; i < M; ++i)
        for (int a = 0; a < NA; ++a) acc[i][a] = _mm256_setzero_ps();
      const int64_t tb = b * bytes_per_block;
      for (int64_t t = tb; t < tb + bytes_per_block; t += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + t));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib), lo = _mm_and_si128(v, nib);
        const __m256i idx = _mm256_inserti128_si256(_mm256_castsi128_si256(hi), lo, 1);
        const __m256i b0 = _mm256_shuffle_epi8(t0, idx), b1 = _mm256_shuffle_epi8(t1, idx);
        const __m256i b2 = _mm256_shuffle_epi8(t2, idx), b3 = _mm256_shuffle_epi8(t3, idx);
        const __m256i w01l = _mm256_unpacklo_epi8(b0, b1), w01h = _mm256_unpackhi_epi8(b0, b1);
        const __m256i w23l = _mm256_unpacklo_epi8(b2, b3), w23h = _mm256_unpackhi_epi8(b2, b3);
        const __m256 f[4] = {_mm256_castsi256_ps(_mm256_unpacklo_epi16(w01l, w23l)),
                             _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01l, w23l)),
                             _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01h, w23h)),
                             _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01h, w23h))};
        const float* xp = xq + 2 * t;
        for (int i = 0; i < M; ++i)
          for (int n = 0; n < 4; ++n)
            acc[i][n % NA] = _mm256_fmadd_ps(f[n], _mm256_loadu_ps(xp + i * q.k + 8 * n), acc[i][n % NA]);
      }
      const __m256 scale = _mm256_set1_ps(absmax.next());
      for (int i = 0; i < M; ++i) {
        __m256 s = acc[i][0];
        for (int a = 1; a < NA; ++a) s = _mm256_add_ps(s, acc[i][a]);
        tot[i] = _mm256_fmadd_ps(s, scale, tot[i]);
      }
    }
    for (int i = 0; i < M; ++i) y[i * q.n + j] = hsum_avx2(tot[i]);
  }
}

// AVX2, blocksize % 64 == 0: 32 packed bytes (64 weights) per step with one 256-bit load, so the nibble
// indices need no cross-lane insert: hi = byte >> 4 and lo = byte & 15 are each one ymm of 32 codes, and
// both go through the same four vpshufb + two rounds of unpacks as rows_avx2_shuffle (12 shuffles per
// 32 weights, the bound on Zen 3's two shuffle pipes). f[h][n], lane l, element i holds the weight of
// byte u = t + 16l + 4n + i, column 2u + h; x is reordered once per call to that order (xq, see
// nf4_gemv). Each block's scale is stored to `scales` and broadcast from memory (a load, not a shuffle).
// BPB = bytes per block (a multiple of 32) when known at compile time, 0 = q.blocksize / 2.
template <int M, int BPB>
__attribute__((target("avx2,fma"))) void rows_avx2_wide(const Quant4& q, const float* xq, const float*, int64_t j0,
                                                        int64_t j1, float* y) {
  const auto [t0, t1, t2, t3] = lut_byte_planes(q);
  const __m256i nib = _mm256_set1_epi8(0x0f);
  constexpr int NA = M == 1 ? 4 : 1;  // accumulators per row: keeps the FMA chains off the critical path
  const int64_t half = q.k / 2, bytes_per_block = BPB > 0 ? BPB : q.blocksize / 2,
                blocks_per_row = q.k / q.blocksize;
  std::vector<float> scales(static_cast<std::size_t>(blocks_per_row));
  float scale_table[256];
  ScaleCursor absmax(q, scale_table);
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = q.codes + j * half;
    absmax.seek(j * blocks_per_row);
    __m256 tot[M];
    for (int i = 0; i < M; ++i) tot[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      __m256 acc[M][NA];
      for (int i = 0; i < M; ++i)
        for (int a = 0; a < NA; ++a) acc[i][a] = _mm256_setzero_ps();
      scales[b] = absmax.next();  // between decodes, where it overlaps them (not in a loop of its own)
      const int64_t tb = b * bytes_per_block;
      for (int64_t t = tb; t < tb + bytes_per_block; t += 32) {
        // 2 KiB ahead (one 4096-wide row): with the hardware prefetcher alone the loop waited on L3/DRAM
        // (ab-builds.ts, quiet: 3-6 % at 2 threads, 7-9 % at 1; 4 KiB ahead: no different).
        if ((t & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(row + t + 2048), _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + t));
        const __m256i idx[2] = {_mm256_and_si256(_mm256_srli_epi16(v, 4), nib), _mm256_and_si256(v, nib)};
        const float* xp = xq + 2 * t;
        for (int h = 0; h < 2; ++h) {
          const __m256i b0 = _mm256_shuffle_epi8(t0, idx[h]), b1 = _mm256_shuffle_epi8(t1, idx[h]);
          const __m256i b2 = _mm256_shuffle_epi8(t2, idx[h]), b3 = _mm256_shuffle_epi8(t3, idx[h]);
          const __m256i w01l = _mm256_unpacklo_epi8(b0, b1), w01h = _mm256_unpackhi_epi8(b0, b1);
          const __m256i w23l = _mm256_unpacklo_epi8(b2, b3), w23h = _mm256_unpackhi_epi8(b2, b3);
          const __m256 f[4] = {_mm256_castsi256_ps(_mm256_unpacklo_epi16(w01l, w23l)),
                               _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01l, w23l)),
                               _mm256_castsi256_ps(_mm256_unpacklo_epi16(w01h, w23h)),
                               _mm256_castsi256_ps(_mm256_unpackhi_epi16(w01h, w23h))};
          for (int i = 0; i < M; ++i)
            for (int n = 0; n < 4; ++n)
              acc[i][n % NA] =
                  _mm256_fmadd_ps(f[n], _mm256_loadu_ps(xp + i * q.k + 32 * h + 8 * n), acc[i][n % NA]);
        }
      }
      const __m256 scale = _mm256_broadcast_ss(&scales[b]);
      for (int i = 0; i < M; ++i) {
        __m256 s = acc[i][0];
        for (int a = 1; a < NA; ++a) s = _mm256_add_ps(s, acc[i][a]);
        tot[i] = _mm256_fmadd_ps(s, scale, tot[i]);
      }
    }
    for (int i = 0; i < M; ++i) y[i * q.n + j] = hsum_avx2(tot[i]);
  }
}

#endif  // __x86_64__

#if defined(__aarch64__)
// out[p] lanes l = LUT[idx[4p + l]] for p < 4: byte indices 4·code + {0,1,2,3} into the LUT's 64 bytes.
inline void lut16_neon(uint8x16_t idx, const uint8x16x4_t& table, float32x4_t out[4]) {
  static const uint8_t kOffsets[16] = {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3};
  const uint8x16_t off = vld1q_u8(kOffsets), idx4 = vshlq_n_u8(idx, 2);
  const uint8x16_t lo = vzip1q_u8(idx4, idx4), hi = vzip2q_u8(idx4, idx4);  // each index twice
  out[0] = vreinterpretq_f32_u8(vqtbl4q_u8(table, vaddq_u8(vzip1q_u8(lo, lo), off)));  // four times
  out[1] = vreinterpretq_f32_u8(vqtbl4q_u8(table, vaddq_u8(vzip2q_u8(lo, lo), off)));
  out[2] = vreinterpretq_f32_u8(vqtbl4q_u8(table, vaddq_u8(vzip1q_u8(hi, hi), off)));
  out[3] = vreinterpretq_f32_u8(vqtbl4q_u8(table, vaddq_u8(vzip2q_u8(hi, hi), off)));
}

template <int M>
void rows_neon(const Quant4& q, const float* xe, const float* xo, int64_t j0, int64_t j1, float* y) {
  const auto* lut_bytes = reinterpret_cast<const uint8_t*>(q.lut);
  const uint8x16x4_t table = {{vld1q_u8(lut_bytes), vld1q_u8(lut_bytes + 16), vld1q_u8(lut_bytes + 32),
                               vld1q_u8(lut_bytes + 48)}};
  const int64_t half = q.k / 2, bytes_per_block = q.blocksize / 2, blocks_per_row = q.k / q.blocksize;
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = q.codes + j * half;
    float32x4_t tot[M];
    for (int i = 0; i < M; ++i) tot[i] = vdupq_n_f32(0.0f);
    AbsmaxCursor absmax(q, j * blocks_per_row);
    for (int64_t b = 0; b < blocks_per_row; ++b) {
      float32x4_t se[M], so[M];
      for (int i = 0; i < M; ++i) se[i] = so[i] = vdupq_n_f32(0.0f);
      const int64_t t0 = b * bytes_per_block;
      for (int64_t t = t0; t < t0 + bytes_per_block; t += 16) {
        const uint8x16_t v = vld1q_u8(row + t);
        float32x4_t wh[4], wl[4];
        lut16_neon(vshrq_n_u8(v, 4), table, wh);
        lut16_neon(vandq_u8(v, vdupq_n_u8(15)), table, wl);
        for (int i = 0; i < M; ++i)
          for (int p = 0; p < 4; ++p) {
            se[i] = vfmaq_f32(se[i], wh[p], vld1q_f32(xe + i * half + t + 4 * p));
            so[i] = vfmaq_f32(so[i], wl[p], vld1q_f32(xo + i * half + t + 4 * p));
          }
      }
      const float32x4_t scale = vdupq_n_f32(absmax.next());
      for (int i = 0; i < M; ++i) tot[i] = vfmaq_f32(tot[i], vaddq_f32(se[i], so[i]), scale);
    }
    for (int i = 0; i < M; ++i) y[i * q.n + j] = vaddvq_f32(tot[i]);
  }
}
#endif  // __aarch64__

using RowsFn = void (*)(const Quant4&, const float*, const float*, int64_t, int64_t, float*);

template <template <int> class Pick>
RowsFn pick_m(int64_t m) {
  switch (m) {
    case 1: return Pick<1>::fn;
    case 2: return Pick<2>::fn;
    case 3: return Pick<3>::fn;
    default: return Pick<4>::fn;
  }
}
#if defined(__x86_64__)
template <int M>
struct Avx512Rows {
  static constexpr RowsFn fn = rows_avx512<M, 0>;
};
template <int M>
struct Avx512Rows64 {  // blocksize 64, the bitsandbytes default
  static constexpr RowsFn fn = rows_avx512<M, 32>;
};
template <int M>
struct Avx2WideRows64 {  // blocksize 64; x in the wide order (see rows_avx2_wide)
  static constexpr RowsFn fn = rows_avx2_wide<M, 32>;
};
template <int M>
struct Avx2WideRows {  // blocksize % 64 == 0
  static constexpr RowsFn fn = rows_avx2_wide<M, 0>;
};
template <int M>
struct Avx2ShuffleRows {  // blocksize % 32 == 0; x in the xq order (see rows_avx2_shuffle)
  static constexpr RowsFn fn = rows_avx2_shuffle<M>;
};
#elif defined(__aarch64__)
template <int M>
struct NeonRows {
  static constexpr RowsFn fn = rows_neon<M>;
};
#endif

}  // namespace

bool nf4_gemv(const Quant4& q, const float* x, int64_t m, float* y) {
  // Follow the GEMM's ISA cap (so forcing "avx2"/"scalar" in tests covers these paths too).
  const std::string_view level = gemm_isa_cap();
  if (m < 1 || m > kNf4GemvMaxM || q.k % q.blocksize != 0) return false;
  RowsFn rows = nullptr;
  enum { kSplit, kShuffle, kWide } order = kSplit;  // how x is rearranged for the row kernel
#if defined(__x86_64__)
  const bool avx2 = level != "scalar" && isa().avx2_fma;
  if (level == "avx512" && q.blocksize == 64) rows = pick_m<Avx512Rows64>(m);
  else if (level == "avx512" && q.blocksize % 32 == 0) rows = pick_m<Avx512Rows>(m);
  else if (avx2 && q.blocksize == 64) rows = pick_m<Avx2WideRows64>(m), order = kWide;
  else if (avx2 && q.blocksize % 64 == 0) rows = pick_m<Avx2WideRows>(m), order = kWide;
  else if (avx2 && q.blocksize % 32 == 0) rows = pick_m<Avx2ShuffleRows>(m), order = kShuffle;
#elif defined(__aarch64__)
  if (level == "neon" && q.blocksize % 32 == 0) rows = pick_m<NeonRows>(m);
#endif
  if (!rows) return false;
  const int64_t half = q.k / 2;
  std::vector<float> split(static_cast<std::size_t>(2 * m * half));
  float *xe = split.data(), *xo = split.data() + m * half;
  if (order == kWide) {
    // xq[i][64s + 32h + 8n + 4l + u] = x[i][2(32s + 16l + 4n + u) + h] (h, l < 2; n, u < 4); k % 64 == 0 here.
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < q.k; c += 64)
        for (int h = 0; h < 2; ++h)
          for (int n = 0; n < 4; ++n)
            for (int l = 0; l < 2; ++l)
              for (int u = 0; u < 4; ++u)
                xe[i * q.k + c + 32 * h + 8 * n + 4 * l + u] = x[i * q.k + c + 2 * (16 * l + 4 * n + u) + h];
    xo = nullptr;
  } else if (order == kShuffle) {
    // xq[i][8c + u] = x[i][8c + 2u], xq[i][8c + 4 + u] = x[i][8c + 2u + 1] (u < 4); k % 32 == 0 here.
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < q.k; c += 8)
        for (int u = 0; u < 4; ++u) {
          xe[i * q.k + c + u] = x[i * q.k + c + 2 * u];
          xe[i * q.k + c + 4 + u] = x[i * q.k + c + 2 * u + 1];
        }
    xo = nullptr;
  } else {
    // Even/odd column split of x: xe[i][t] = x[i][2t], xo[i][t] = x[i][2t+1].
    for (int64_t i = 0; i < m; ++i)
      for (int64_t t = 0; t < half; ++t) {
        xe[i * half + t] = x[i * q.k + 2 * t];
        xo[i * half + t] = x[i * q.k + 2 * t + 1];
      }
  }
  // Rows are handed out in chunks of 128 (each chunk streams >= 128*k/2 bytes, far above the cost
  // of one atomic) from a shared counter, so a descheduled thread does not hold the call up.
  constexpr int64_t kChunk = 128;
  const int64_t chunks = (q.n + kChunk - 1) / kChunk;
  std::atomic<int64_t> next{0};
  parallel_for(
      static_cast<std::size_t>(std::min<int64_t>(num_threads(), chunks)),
      [&](std::size_t, std::size_t) {
        for (int64_t c; (c = next.fetch_add(1)) < chunks;) rows(q, xe, xo, c * kChunk, std::min(q.n, (c + 1) * kChunk), y);
      },
      1);
  return true;
}

}  // namespace qlora
