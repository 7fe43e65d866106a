// Optimizer update kernels for @qlora/paged-optim, in place, bit-identical to its TypeScript references
// (packages/paged-optim/src/kernels/reference.ts). The per-step scalars arrive already rounded to f32
// (paged-optim/src/kernels/scalars.ts), so host math can never make the two disagree.
//
// 32-bit updates (AdamW, Lion, SGD) round like torch's AVX2 CPU kernels: fused multiply-add where torch
// fuses (add with alpha, addcmul), separate roundings elsewhere. The AVX2 path and the scalar path
// (std::fma) give identical results. 8-bit updates follow bitsandbytes' blockwise-256 CUDA kernels
// (spec §8.4) without contraction. GCC contracts a·b + c into an FMA by default in C++ (across
// statements, and in AVX2 code even between intrinsics), which would break the bit-for-bit agreement:
// contraction is switched off for this file, so every FMA here is an explicit one.
// On arm64 the AVX2 bodies are not compiled and the scalar bodies run (isa().avx2_fma is false there).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "fused_args.h"
#include "isa.h"
#include "pool.h"
#include "quantize8bit_literal.h"
#include "registry.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace qlora {
namespace {

constexpr int64_t kBlock8 = 256;  // elements per absmax block of the 8-bit states (bitsandbytes ≥ 0.44)
constexpr size_t kGrain = 1 << 14;

// ---------------------------------------------------------------------------------------------
// Exact 8-bit code search. `quantize8bit_literal` (quantize8bit_literal.h) is bitsandbytes' dQuantize<0>
// binary search (nearest code by f32 midpoints, ties to the even index, NaN -> 0), the function @qlora/nf4's
// quantize8bitValue implements.
// It is monotone in y, so it is a step function with 255 steps: Quantizer finds each step's first float
// once per map (bisection over the order-preserving integer keys of floats) and then answers with a
// table of 2^16 buckets of 2^16 consecutive floats (7 mantissa bits: finer than the dynamic maps' code
// spacing, so a bucket holds at most one step; a bucket with two is flagged and searched in full) plus one
// key comparison: exactly the literal search's result. 2^16 rather than 2^18 buckets: the entries the
// scaled moments touch then stay in L1 (measured ~10% faster per step on Zen 3).

// Order-preserving map of float bit patterns to uint32 (−NaN < −inf < … < −0 < +0 < … < +inf < +NaN).
inline uint32_t orderKey(float y) {
  uint32_t u;
  std::memcpy(&u, &y, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float fromKey(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

struct Quantizer {
  float code[256];
  uint32_t firstKey[256];  // firstKey[c]: smallest key whose float quantizes above c (c < 255); [255] = max
  // One 4-byte entry per bucket of 2^kShift consecutive keys: the code of the bucket's first float (bits
  // 24-31), whether a second step lies inside the bucket (bit 22; never for the dynamic maps at this width),
  // and in the low kShift bits the last key (low bits) still below the bucket's next step: kLow when the
  // step is not inside, so `(key & kLow) > last` adds the step without a branch. One small load answers the
  // search: a chain of dependent loads (bucket, then firstKey) measured 2-3x slower, and a small table
  // stays in cache while the update streams parameters and states through it.
  static constexpr int kShift = 16;
  static constexpr uint32_t kLow = (1u << kShift) - 1;
  std::vector<uint32_t> buckets;
  bool anyMore = false;  // some bucket holds two steps (bit 22 set somewhere; none for the dynamic maps)
  // Codes [0, negatives) have the sign bit set and no other code has (true of the signed dynamic map,
  // 127; 0 for the unsigned one), so the sign fix compares indices; -1 when a map is not ordered so.
  int negatives = -1;

  explicit Quantizer(const float* qmap) {
    std::memcpy(code, qmap, sizeof(code));
    const uint32_t minKey = orderKey(-INFINITY), maxKey = orderKey(INFINITY);
    for (int c = 0; c < 255; ++c) {
      if (quantize8bit_literal(code, INFINITY) <= c) {
        firstKey[c] = UINT32_MAX;
        continue;
      }
      uint32_t a = minKey, b = maxKey;  // literal(fromKey(b)) > c; find the smallest such key
      if (quantize8bit_literal(code, fromKey(a)) > c) b = a;
      while (b - a > 1) {
        const uint32_t mid = a + (b - a) / 2;
        if (quantize8bit_literal(code, fromKey(mid)) > c) b = mid;
        else a = mid;
      }
      firstKey[c] = b;
    }
    firstKey[255] = UINT32_MAX;
    int neg = 0;
    while (neg < 256 && std::signbit(code[neg])) ++neg;
    negatives = neg;
    for (int k = neg; k < 256; ++k)
      if (std::signbit(code[k])) negatives = -1;
    int c = 0;
    buckets.resize(size_t{1} << (32 - kShift));
    for (uint32_t bk = 0; bk < buckets.size(); ++bk) {
      const uint64_t first = uint64_t{bk} << kShift, last = first + kLow;
      while (c < 255 && first >= firstKey[c]) ++c;
      const bool inside = c < 255 && firstKey[c] <= last;
      const bool more = inside && c < 254 && firstKey[c + 1] <= last;
      anyMore = anyMore || more;
      // inside: firstKey[c] lies in (first, last] (the loop above moved c past any step at `first`), so its
      // low bits are ≥ 1
      const uint32_t lastBelow = inside ? (firstKey[c] & kLow) - 1 : kLow;
      buckets[bk] = (uint32_t(c) << 24) | (uint32_t(more) << 22) | lastBelow;
    }
  }

  uint8_t quantize(float y) const {
    if (y != y) return 0;
    const uint32_t k = orderKey(y);
    const uint32_t e = buckets[k >> kShift];
    int c = static_cast<int>(e >> 24) + static_cast<int>((k & kLow) > (e & kLow));
    if (e & (1u << 22))
      while (k >= firstKey[c]) ++c;  // firstKey[255] exceeds every non-NaN key: c stops at 255
    return static_cast<uint8_t>(c);
  }
};

// Quantizers for the maps seen so far, matched by content (the optimizers pass the same two maps). Shared
// pointers under a mutex: several Node worker threads may call the kernels at once.
std::shared_ptr<const Quantizer> quantizerFor(const float* qmap) {
  static std::mutex lock;
  static std::vector<std::shared_ptr<const Quantizer>> cache;
  std::lock_guard<std::mutex> guard(lock);
  for (const auto& q : cache)
    if (std::memcmp(q->code, qmap, sizeof(q->code)) == 0) return q;
  if (cache.size() >= 8) cache.erase(cache.begin());
  cache.push_back(std::make_shared<const Quantizer>(qmap));
  return cache.back();
}

// First-moment code: never let the stored value flip sign (bitsandbytes' fix after quantize).
inline uint8_t quantizeSigned(const Quantizer& q, float y, float value) {
  int c = q.quantize(y);
  if (std::signbit(q.code[c]) != std::signbit(value)) c = value > 0.0f ? (c < 255 ? c + 1 : 255) : (c > 0 ? c - 1 : 0);
  return static_cast<uint8_t>(c);
}

// y = value / absmax, 0 for an all-zero block (absmax 0): the scaling of the reference.
inline float scaled(float value, float absmax) { return absmax > 0.0f ? value / absmax : 0.0f; }

// Requantizes one block: out[j] = code of values[j] / absmax, with the sign fix when `signFix` (the first
// moment). Scalar version; requantizeBlock below picks the AVX2 one where the CPU has it.
// The divisions get a loop of their own: fused into the search loop they made the scalar step about 2x slower
// (measured), on its own the compiler vectorizes it.
inline void requantizeScalar(const Quantizer& q, const float* values, float absmax, bool signFix, uint8_t* out,
                             int64_t from, int64_t len) {
  float y[kBlock8];
  for (int64_t j = from; j < len; ++j) y[j] = scaled(values[j], absmax);
  for (int64_t j = from; j < len; ++j) out[j] = signFix ? quantizeSigned(q, y[j], values[j]) : q.quantize(y[j]);
}

#if defined(__x86_64__)
#define QLORA_AVX2 __attribute__((target("avx2,fma")))

// table[idx[0..7]]: the indices leave the vector as four 64-bit pairs, eight scalar loads are inserted back.
// On Zen 3 about 4% faster per 8-bit step than vpgatherdd from the same table (measured in the whole step).
QLORA_AVX2 inline __m256i lookup8(const uint32_t* table, __m256i idx) {
  const __m128i l = _mm256_castsi256_si128(idx), h = _mm256_extracti128_si256(idx, 1);
  const uint64_t l01 = _mm_cvtsi128_si64(l), l23 = _mm_extract_epi64(l, 1);
  const uint64_t h01 = _mm_cvtsi128_si64(h), h23 = _mm_extract_epi64(h, 1);
  __m128i lo = _mm_cvtsi32_si128(static_cast<int>(table[uint32_t(l01)]));
  lo = _mm_insert_epi32(lo, static_cast<int>(table[l01 >> 32]), 1);
  lo = _mm_insert_epi32(lo, static_cast<int>(table[uint32_t(l23)]), 2);
  lo = _mm_insert_epi32(lo, static_cast<int>(table[l23 >> 32]), 3);
  __m128i hi = _mm_cvtsi32_si128(static_cast<int>(table[uint32_t(h01)]));
  hi = _mm_insert_epi32(hi, static_cast<int>(table[h01 >> 32]), 1);
  hi = _mm_insert_epi32(hi, static_cast<int>(table[uint32_t(h23)]), 2);
  hi = _mm_insert_epi32(hi, static_cast<int>(table[h23 >> 32]), 3);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

// The code search of Quantizer::quantize, 8 lanes: one bucket entry per lane (lookup8), the in-bucket step
// as a compare; lanes whose bucket holds a second step (never for the dynamic maps) are redone by the
// scalar search.
QLORA_AVX2 inline __m256i quantize8(const Quantizer& q, __m256 yv) {
  const __m256i lowMask = _mm256_set1_epi32(static_cast<int>(Quantizer::kLow));
  const __m256i signBit = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i moreBit = _mm256_set1_epi32(1 << 22);
  const __m256i u = _mm256_castps_si256(yv);
  const __m256i key = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), signBit));  // orderKey
  const __m256i e = lookup8(q.buckets.data(), _mm256_srli_epi32(key, Quantizer::kShift));
  const __m256i past = _mm256_cmpgt_epi32(_mm256_and_si256(key, lowMask), _mm256_and_si256(e, lowMask));  // -1/0
  __m256i c = _mm256_sub_epi32(_mm256_srli_epi32(e, 24), past);
  c = _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(yv, yv, _CMP_UNORD_Q)), c);  // NaN -> 0
  if (!q.anyMore) return c;
  const int more = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(e, moreBit), moreBit)));
  if (more) {
    alignas(32) int32_t lanes[8];
    alignas(32) float ys[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), c);
    _mm256_store_ps(ys, yv);
    for (int l = 0; l < 8; ++l)
      if (more >> l & 1) lanes[l] = q.quantize(ys[l]);
    c = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  }
  return c;
}

// Sign fix of quantizeSigned, 8 lanes: where sign(code[c]) != sign(value), one step toward the value's
// sign. The dynamic signed map's negative codes are its first entries, so sign(code[c]) is c < negatives
// (no gather); another map reads its codes.
QLORA_AVX2 inline __m256i signFix8(const Quantizer& q, __m256i c, __m256 val) {
  const __m256i one = _mm256_set1_epi32(1), top = _mm256_set1_epi32(255), zero = _mm256_setzero_si256();
  const __m256i codeNegative =
      q.negatives >= 0 ? _mm256_cmpgt_epi32(_mm256_set1_epi32(q.negatives), c)
                       : _mm256_srai_epi32(_mm256_castps_si256(_mm256_i32gather_ps(q.code, c, 4)), 31);
  const __m256i flip = _mm256_xor_si256(codeNegative, _mm256_srai_epi32(_mm256_castps_si256(val), 31));
  const __m256 up = _mm256_cmp_ps(val, _mm256_setzero_ps(), _CMP_GT_OQ);
  const __m256i inc = _mm256_min_epi32(_mm256_add_epi32(c, one), top);
  const __m256i dec = _mm256_max_epi32(_mm256_sub_epi32(c, one), zero);
  const __m256i fixed =
      _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(dec), _mm256_castsi256_ps(inc), up));
  return _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(c), _mm256_castsi256_ps(fixed), _mm256_castsi256_ps(flip)));
}

// code[s[0..7]]: eight scalar loads inserted into one vector. On Zen 3 this measured 1.5x faster than
// vgatherdps from the same 1 KiB table (2.8 vs 4.2 ns per 8 lanes).
QLORA_AVX2 inline __m256 dequant8(const float* code, const uint8_t* s) {
  uint64_t b;
  std::memcpy(&b, s, 8);
  __m128 lo = _mm_load_ss(code + (b & 255));
  lo = _mm_insert_ps(lo, _mm_load_ss(code + ((b >> 8) & 255)), 0x10);
  lo = _mm_insert_ps(lo, _mm_load_ss(code + ((b >> 16) & 255)), 0x20);
  lo = _mm_insert_ps(lo, _mm_load_ss(code + ((b >> 24) & 255)), 0x30);
  __m128 hi = _mm_load_ss(code + ((b >> 32) & 255));
  hi = _mm_insert_ps(hi, _mm_load_ss(code + ((b >> 40) & 255)), 0x10);
  hi = _mm_insert_ps(hi, _mm_load_ss(code + ((b >> 48) & 255)), 0x20);
  hi = _mm_insert_ps(hi, _mm_load_ss(code + (b >> 56)), 0x30);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

// Stores 8 codes (each 0..255 in an int32 lane) as 8 bytes.
QLORA_AVX2 inline void storeCodes8(uint8_t* out, __m256i c) {
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(w, w));
}

// requantizeScalar 8 lanes at a time, scaling included (a true division, as the reference).
QLORA_AVX2 void requantizeAvx2(const Quantizer& q, const float* values, float absmax, bool signFix, uint8_t* out,
                               int64_t len) {
  const __m256 am = _mm256_set1_ps(absmax);
  const bool nonzero = absmax > 0.0f;
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 val = _mm256_loadu_ps(values + j);
    const __m256 y = nonzero ? _mm256_div_ps(val, am) : _mm256_setzero_ps();
    __m256i c = quantize8(q, y);
    if (signFix) c = signFix8(q, c, val);
    storeCodes8(out + j, c);
  }
  requantizeScalar(q, values, absmax, signFix, out, j, len);
}

// quantize8 over a whole array (the search on its own, for optimQuantize8bit).
QLORA_AVX2 void quantizeArrayAvx2(const Quantizer& q, const float* y, uint8_t* out, int64_t len) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) storeCodes8(out + j, quantize8(q, _mm256_loadu_ps(y + j)));
  for (; j < len; ++j) out[j] = q.quantize(y[j]);
}
#else
void requantizeAvx2(const Quantizer& q, const float* values, float absmax, bool signFix, uint8_t* out, int64_t len) {
  requantizeScalar(q, values, absmax, signFix, out, 0, len);
}
void quantizeArrayAvx2(const Quantizer& q, const float* y, uint8_t* out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = q.quantize(y[j]);
}
#endif

inline void requantizeBlock(bool avx2, const Quantizer& q, const float* values, float absmax, bool signFix,
                            uint8_t* out, int64_t len) {
  if (avx2) requantizeAvx2(q, values, absmax, signFix, out, len);
  else requantizeScalar(q, values, absmax, signFix, out, 0, len);
}

// ---------------------------------------------------------------------------------------------
// AdamW 8-bit (bitsandbytes kOptimizerStatic8bit2StateBlockwise).

struct Adam8Args {
  float* p;
  const float* g;
  uint8_t* s1;
  uint8_t* s2;
  float* a1;
  float* a2;
  const Quantizer* q1;
  const Quantizer* q2;
  int64_t n;
  float beta1, omb1, beta2, omb2, c2eps, stepSize, decay;
};

// One element of the 2-state update: new m and v (0 for a non-finite gradient), parameter stepped.
inline void adam8Element(const Adam8Args& a, int64_t i, float am1, float am2, float& mm, float& vv) {
  const float gi = a.g[i];
  mm = 0.0f;
  vv = 0.0f;
  if (!std::isfinite(gi)) return;
  vv = (a.q2->code[a.s2[i]] * am2) * a.beta2 + (a.omb2 * gi) * gi;
  mm = (a.q1->code[a.s1[i]] * am1) * a.beta1 + a.omb1 * gi;
  float pi = a.p[i] + a.stepSize * (mm / (std::sqrt(vv) + a.c2eps));
  if (a.decay != 1.0f) pi = pi * a.decay;
  a.p[i] = pi;
}

#if defined(__x86_64__)
// Horizontal maximum of 8 lanes folded into `acc` (same NaN rule as the scalar `if (x > acc) acc = x`).
QLORA_AVX2 inline void foldMax(__m256 lanes, float& acc) {
  alignas(32) float l[8];
  _mm256_store_ps(l, lanes);
  for (int k = 0; k < 8; ++k)
    if (l[k] > acc) acc = l[k];
}

// The same operations as adam8Element 8 lanes at a time (codes read from the maps by dequant8); lanes with a
// non-finite gradient keep their parameter and get m = v = 0. Block maxima as the scalar loop: a NaN
// never replaces a maximum (max_ps returns its second operand when either is NaN). Returns how many
// elements it handled.
QLORA_AVX2 int64_t adam8Avx2(const Adam8Args& a, int64_t start, int64_t len, float am1, float am2, float* m,
                             float* v, float& max1, float& max2) {
  const __m256 vam1 = _mm256_set1_ps(am1), vam2 = _mm256_set1_ps(am2);
  const __m256 b1 = _mm256_set1_ps(a.beta1), omb1 = _mm256_set1_ps(a.omb1);
  const __m256 b2 = _mm256_set1_ps(a.beta2), omb2 = _mm256_set1_ps(a.omb2);
  const __m256 c2eps = _mm256_set1_ps(a.c2eps), step = _mm256_set1_ps(a.stepSize), decay = _mm256_set1_ps(a.decay);
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), inf = _mm256_set1_ps(INFINITY);
  const bool decayOn = a.decay != 1.0f;
  __m256 mx1 = _mm256_setzero_ps(), mx2 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const int64_t i = start + j;
    const __m256 g = _mm256_loadu_ps(a.g + i);
    const __m256 finite = _mm256_cmp_ps(_mm256_and_ps(g, absMask), inf, _CMP_LT_OQ);
    const __m256 q1 = dequant8(a.q1->code, a.s1 + i), q2 = dequant8(a.q2->code, a.s2 + i);
    __m256 vv = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(q2, vam2), b2), _mm256_mul_ps(_mm256_mul_ps(omb2, g), g));
    __m256 mm = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(q1, vam1), b1), _mm256_mul_ps(omb1, g));
    const __m256 p0 = _mm256_loadu_ps(a.p + i);
    __m256 p1 = _mm256_add_ps(p0, _mm256_mul_ps(step, _mm256_div_ps(mm, _mm256_add_ps(_mm256_sqrt_ps(vv), c2eps))));
    if (decayOn) p1 = _mm256_mul_ps(p1, decay);
    _mm256_storeu_ps(a.p + i, _mm256_blendv_ps(p0, p1, finite));
    mm = _mm256_and_ps(mm, finite);
    vv = _mm256_and_ps(vv, finite);
    _mm256_storeu_ps(m + j, mm);
    _mm256_storeu_ps(v + j, vv);
    mx1 = _mm256_max_ps(_mm256_and_ps(mm, absMask), mx1);
    mx2 = _mm256_max_ps(_mm256_and_ps(vv, absMask), mx2);
  }
  foldMax(mx1, max1);
  foldMax(mx2, max2);
  return j;
}
#else
int64_t adam8Avx2(const Adam8Args&, int64_t, int64_t, float, float, float*, float*, float&, float&) { return 0; }
#endif

// One block of 256: update (m, v in f32, parameter stepped, new block maxima), then requantize both states.
void adam8Block(const Adam8Args& a, int64_t b, bool avx2) {
  const int64_t start = b * kBlock8, len = std::min(kBlock8, a.n - start);
  alignas(32) float m[kBlock8], v[kBlock8];
  float max1 = 0.0f, max2 = 0.0f;
  const float am1 = a.a1[b], am2 = a.a2[b];
  int64_t j = avx2 ? adam8Avx2(a, start, len, am1, am2, m, v, max1, max2) : 0;
  for (; j < len; ++j) {
    adam8Element(a, start + j, am1, am2, m[j], v[j]);
    if (std::fabs(m[j]) > max1) max1 = std::fabs(m[j]);
    if (std::fabs(v[j]) > max2) max2 = std::fabs(v[j]);
  }
  a.a1[b] = max1;
  a.a2[b] = max2;
  requantizeBlock(avx2, *a.q1, m, max1, true, a.s1 + start, len);
  requantizeBlock(avx2, *a.q2, v, max2, false, a.s2 + start, len);
}

// optimAdamW8bit(p, g, state1, state2, absmax1, absmax2, qmap1, qmap2, n,
//                beta1, oneMinusBeta1, beta2, oneMinusBeta2, c2Eps, stepSize, decay)
Napi::Value OptimAdamW8bit(const Napi::CallbackInfo& info) {
  Args x(info, "optimAdamW8bit");
  const int64_t n = x.count(8, "n");
  const int64_t blocks = (n + kBlock8 - 1) / kBlock8;
  Adam8Args a{};
  a.p = x.f32(0, "param", n);
  a.g = x.f32(1, "grad", n);
  a.s1 = x.u8(2, "state1", n);
  a.s2 = x.u8(3, "state2", n);
  a.a1 = x.f32(4, "absmax1", blocks);
  a.a2 = x.f32(5, "absmax2", blocks);
  const float* qm1 = x.f32(6, "qmap1", 256);
  const float* qm2 = x.f32(7, "qmap2", 256);
  a.n = n;
  a.beta1 = x.number(9, "beta1");
  a.omb1 = x.number(10, "oneMinusBeta1");
  a.beta2 = x.number(11, "beta2");
  a.omb2 = x.number(12, "oneMinusBeta2");
  a.c2eps = x.number(13, "c2Eps");
  a.stepSize = x.number(14, "stepSize");
  a.decay = x.number(15, "decay");
  if (!x.ok()) return x.env().Undefined();
  const auto hold1 = quantizerFor(qm1), hold2 = quantizerFor(qm2);
  a.q1 = hold1.get();
  a.q2 = hold2.get();
  const bool avx2 = isa().avx2_fma;
  parallel_for(static_cast<size_t>(blocks), [&](size_t b0, size_t b1) {
    for (size_t b = b0; b < b1; ++b) adam8Block(a, static_cast<int64_t>(b), avx2);
  }, 16);
  return x.env().Undefined();
}

// ---------------------------------------------------------------------------------------------
// Lion 8-bit (bitsandbytes' 1-state blockwise kernel order; non-finite gradients as the 2-state rule).

struct Lion8Args {
  float* p;
  const float* g;
  uint8_t* s1;
  float* a1;
  const Quantizer* q1;
  int64_t n;
  float decay, beta1, omb1, beta2, omb2, negLr;
};

inline float lionSign(float c) { return c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c); }

// One element of the 1-state update: new m (0 for a non-finite gradient), parameter stepped.
inline float lion8Element(const Lion8Args& a, int64_t i, float am1) {
  const float gi = a.g[i];
  if (!std::isfinite(gi)) return 0.0f;
  const float mOld = a.q1->code[a.s1[i]] * am1;
  const float c = mOld * a.beta1 + a.omb1 * gi;
  a.p[i] = a.p[i] * a.decay + a.negLr * lionSign(c);
  return mOld * a.beta2 + a.omb2 * gi;
}

#if defined(__x86_64__)
// lion8Element 8 lanes at a time (sign(c) as lion32Avx2: ±1, and c itself where c is ±0 or NaN).
QLORA_AVX2 int64_t lion8Avx2(const Lion8Args& a, int64_t start, int64_t len, float am1, float* m, float& max1) {
  const __m256 vam1 = _mm256_set1_ps(am1), decay = _mm256_set1_ps(a.decay), negLr = _mm256_set1_ps(a.negLr);
  const __m256 b1 = _mm256_set1_ps(a.beta1), omb1 = _mm256_set1_ps(a.omb1);
  const __m256 b2 = _mm256_set1_ps(a.beta2), omb2 = _mm256_set1_ps(a.omb2);
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), inf = _mm256_set1_ps(INFINITY);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), minusOne = _mm256_set1_ps(-1.0f);
  __m256 mx = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const int64_t i = start + j;
    const __m256 g = _mm256_loadu_ps(a.g + i);
    const __m256 finite = _mm256_cmp_ps(_mm256_and_ps(g, absMask), inf, _CMP_LT_OQ);
    const __m256 mOld = _mm256_mul_ps(dequant8(a.q1->code, a.s1 + i), vam1);
    const __m256 c = _mm256_add_ps(_mm256_mul_ps(mOld, b1), _mm256_mul_ps(omb1, g));
    __m256 sg = _mm256_blendv_ps(c, one, _mm256_cmp_ps(c, zero, _CMP_GT_OQ));
    sg = _mm256_blendv_ps(sg, minusOne, _mm256_cmp_ps(c, zero, _CMP_LT_OQ));
    const __m256 p0 = _mm256_loadu_ps(a.p + i);
    const __m256 p1 = _mm256_add_ps(_mm256_mul_ps(p0, decay), _mm256_mul_ps(negLr, sg));
    _mm256_storeu_ps(a.p + i, _mm256_blendv_ps(p0, p1, finite));
    const __m256 mm = _mm256_and_ps(_mm256_add_ps(_mm256_mul_ps(mOld, b2), _mm256_mul_ps(omb2, g)), finite);
    _mm256_storeu_ps(m + j, mm);
    mx = _mm256_max_ps(_mm256_and_ps(mm, absMask), mx);
  }
  foldMax(mx, max1);
  return j;
}
#else
int64_t lion8Avx2(const Lion8Args&, int64_t, int64_t, float, float*, float&) { return 0; }
#endif

void lion8Block(const Lion8Args& a, int64_t b, bool avx2) {
  const int64_t start = b * kBlock8, len = std::min(kBlock8, a.n - start);
  alignas(32) float m[kBlock8];
  float max1 = 0.0f;
  const float am1 = a.a1[b];
  int64_t j = avx2 ? lion8Avx2(a, start, len, am1, m, max1) : 0;
  for (; j < len; ++j) {
    m[j] = lion8Element(a, start + j, am1);
    if (std::fabs(m[j]) > max1) max1 = std::fabs(m[j]);
  }
  a.a1[b] = max1;
  requantizeBlock(avx2, *a.q1, m, max1, true, a.s1 + start, len);
}

// optimLion8bit(p, g, state1, absmax1, qmap1, n, decay, beta1, oneMinusBeta1, beta2, oneMinusBeta2, negLr)
Napi::Value OptimLion8bit(const Napi::CallbackInfo& info) {
  Args x(info, "optimLion8bit");
  const int64_t n = x.count(5, "n");
  const int64_t blocks = (n + kBlock8 - 1) / kBlock8;
  Lion8Args a{};
  a.p = x.f32(0, "param", n);
  a.g = x.f32(1, "grad", n);
  a.s1 = x.u8(2, "state1", n);
  a.a1 = x.f32(3, "absmax1", blocks);
  const float* qm1 = x.f32(4, "qmap1", 256);
  a.n = n;
  a.decay = x.number(6, "decay");
  a.beta1 = x.number(7, "beta1");
  a.omb1 = x.number(8, "oneMinusBeta1");
  a.beta2 = x.number(9, "beta2");
  a.omb2 = x.number(10, "oneMinusBeta2");
  a.negLr = x.number(11, "negLr");
  if (!x.ok()) return x.env().Undefined();
  const auto hold1 = quantizerFor(qm1);
  a.q1 = hold1.get();
  const bool avx2 = isa().avx2_fma;
  parallel_for(static_cast<size_t>(blocks), [&](size_t b0, size_t b1) {
    for (size_t b = b0; b < b1; ++b) lion8Block(a, static_cast<int64_t>(b), avx2);
  }, 16);
  return x.env().Undefined();
}

// ---------------------------------------------------------------------------------------------
// 32-bit updates. Each has a scalar body (std::fma where torch fuses) and an AVX2 body with the same
// operations 8 lanes at a time; the AVX2 body handles whole vectors and hands the tail to the scalar one.

struct AdamW32 {
  float decay, beta1, omb1, beta2, omb2, eps, bc2Sqrt, negStep;
};

inline void adamw32Scalar(float* p, const float* g, float* m, float* v, size_t i0, size_t i1, const AdamW32& s) {
  for (size_t i = i0; i < i1; ++i) {
    const float gi = g[i];
    const float pi = p[i] * s.decay;
    const float mi = std::fma(s.omb1, gi, m[i] * s.beta1);
    const float vi = std::fma(s.omb2 * gi, gi, v[i] * s.beta2);
    const float denom = std::sqrt(vi) / s.bc2Sqrt + s.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + (s.negStep * mi) / denom;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void adamw32Avx2(float* p, const float* g, float* m, float* v, size_t i0,
                                                       size_t i1, const AdamW32& s) {
  const __m256 decay = _mm256_set1_ps(s.decay), b1 = _mm256_set1_ps(s.beta1), omb1 = _mm256_set1_ps(s.omb1);
  const __m256 b2 = _mm256_set1_ps(s.beta2), omb2 = _mm256_set1_ps(s.omb2), eps = _mm256_set1_ps(s.eps);
  const __m256 bc2 = _mm256_set1_ps(s.bc2Sqrt), neg = _mm256_set1_ps(s.negStep);
  size_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    const __m256 mi = _mm256_fmadd_ps(omb1, gi, _mm256_mul_ps(_mm256_loadu_ps(m + i), b1));
    const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(omb2, gi), gi, _mm256_mul_ps(_mm256_loadu_ps(v + i), b2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(neg, mi), denom)));
  }
  adamw32Scalar(p, g, m, v, i, i1, s);
}
#else
// Not compiled off x86: never called there (isa().avx2_fma is false).
void adamw32Avx2(float* p, const float* g, float* m, float* v, size_t i0, size_t i1, const AdamW32& s) {
  adamw32Scalar(p, g, m, v, i0, i1, s);
}
#endif

// optimAdamW32(p, g, m, v, n, decay, beta1, oneMinusBeta1, beta2, oneMinusBeta2, eps, bc2Sqrt, negStepSize)
Napi::Value OptimAdamW32(const Napi::CallbackInfo& info) {
  Args x(info, "optimAdamW32");
  const int64_t n = x.count(4, "n");
  float* p = x.f32(0, "param", n);
  const float* g = x.f32(1, "grad", n);
  float* m = x.f32(2, "m", n);
  float* v = x.f32(3, "v", n);
  AdamW32 s{};
  s.decay = x.number(5, "decay");
  s.beta1 = x.number(6, "beta1");
  s.omb1 = x.number(7, "oneMinusBeta1");
  s.beta2 = x.number(8, "beta2");
  s.omb2 = x.number(9, "oneMinusBeta2");
  s.eps = x.number(10, "eps");
  s.bc2Sqrt = x.number(11, "bc2Sqrt");
  s.negStep = x.number(12, "negStepSize");
  if (!x.ok()) return x.env().Undefined();
  const bool avx2 = isa().avx2_fma;
  parallel_for(static_cast<size_t>(n), [&](size_t i0, size_t i1) {
    if (avx2) adamw32Avx2(p, g, m, v, i0, i1, s);
    else adamw32Scalar(p, g, m, v, i0, i1, s);
  }, kGrain);
  return x.env().Undefined();
}

struct Lion32 {
  float decay, beta1, omb1, beta2, omb2, negLr;
};

inline void lion32Scalar(float* p, const float* g, float* m, size_t i0, size_t i1, const Lion32& s) {
  for (size_t i = i0; i < i1; ++i) {
    const float gi = g[i];
    const float c = std::fma(s.omb1, gi, m[i] * s.beta1);
    p[i] = std::fma(s.negLr, lionSign(c), p[i] * s.decay);
    m[i] = std::fma(s.omb2, gi, m[i] * s.beta2);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void lion32Avx2(float* p, const float* g, float* m, size_t i0, size_t i1,
                                                      const Lion32& s) {
  const __m256 decay = _mm256_set1_ps(s.decay), b1 = _mm256_set1_ps(s.beta1), omb1 = _mm256_set1_ps(s.omb1);
  const __m256 b2 = _mm256_set1_ps(s.beta2), omb2 = _mm256_set1_ps(s.omb2), negLr = _mm256_set1_ps(s.negLr);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), minusOne = _mm256_set1_ps(-1.0f);
  size_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i), mOld = _mm256_loadu_ps(m + i);
    const __m256 c = _mm256_fmadd_ps(omb1, gi, _mm256_mul_ps(mOld, b1));
    // sign(c): ±1, and c itself where c is ±0 or NaN (torch.sign)
    const __m256 pos = _mm256_cmp_ps(c, zero, _CMP_GT_OQ), neg = _mm256_cmp_ps(c, zero, _CMP_LT_OQ);
    __m256 sg = _mm256_blendv_ps(c, one, pos);
    sg = _mm256_blendv_ps(sg, minusOne, neg);
    _mm256_storeu_ps(p + i, _mm256_fmadd_ps(negLr, sg, _mm256_mul_ps(_mm256_loadu_ps(p + i), decay)));
    _mm256_storeu_ps(m + i, _mm256_fmadd_ps(omb2, gi, _mm256_mul_ps(mOld, b2)));
  }
  lion32Scalar(p, g, m, i, i1, s);
}
#else
// Not compiled off x86: never called there (isa().avx2_fma is false).
void lion32Avx2(float* p, const float* g, float* m, size_t i0, size_t i1, const Lion32& s) {
  lion32Scalar(p, g, m, i0, i1, s);
}
#endif

// optimLion32(p, g, m, n, decay, beta1, oneMinusBeta1, beta2, oneMinusBeta2, negLr)
Napi::Value OptimLion32(const Napi::CallbackInfo& info) {
  Args x(info, "optimLion32");
  const int64_t n = x.count(3, "n");
  float* p = x.f32(0, "param", n);
  const float* g = x.f32(1, "grad", n);
  float* m = x.f32(2, "m", n);
  Lion32 s{};
  s.decay = x.number(4, "decay");
  s.beta1 = x.number(5, "beta1");
  s.omb1 = x.number(6, "oneMinusBeta1");
  s.beta2 = x.number(7, "beta2");
  s.omb2 = x.number(8, "oneMinusBeta2");
  s.negLr = x.number(9, "negLr");
  if (!x.ok()) return x.env().Undefined();
  const bool avx2 = isa().avx2_fma;
  parallel_for(static_cast<size_t>(n), [&](size_t i0, size_t i1) {
    if (avx2) lion32Avx2(p, g, m, i0, i1, s);
    else lion32Scalar(p, g, m, i0, i1, s);
  }, kGrain);
  return x.env().Undefined();
}

struct Sgd {
  float wd, momentum, omd, negLr;
  bool nesterov, first;
};

inline void sgdScalar(float* p, const float* g, float* buf, size_t i0, size_t i1, const Sgd& s) {
  for (size_t i = i0; i < i1; ++i) {
    float d = s.wd != 0.0f ? std::fma(s.wd, p[i], g[i]) : g[i];
    if (buf != nullptr) {
      const float b = s.first ? d : std::fma(s.omd, d, buf[i] * s.momentum);
      buf[i] = b;
      d = s.nesterov ? std::fma(s.momentum, b, d) : b;
    }
    p[i] = std::fma(s.negLr, d, p[i]);
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void sgdAvx2(float* p, const float* g, float* buf, size_t i0, size_t i1,
                                                   const Sgd& s) {
  const __m256 wd = _mm256_set1_ps(s.wd), mom = _mm256_set1_ps(s.momentum), omd = _mm256_set1_ps(s.omd);
  const __m256 negLr = _mm256_set1_ps(s.negLr);
  size_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const __m256 pi = _mm256_loadu_ps(p + i);
    __m256 d = _mm256_loadu_ps(g + i);
    if (s.wd != 0.0f) d = _mm256_fmadd_ps(wd, pi, d);
    if (buf != nullptr) {
      const __m256 b = s.first ? d : _mm256_fmadd_ps(omd, d, _mm256_mul_ps(_mm256_loadu_ps(buf + i), mom));
      _mm256_storeu_ps(buf + i, b);
      d = s.nesterov ? _mm256_fmadd_ps(mom, b, d) : b;
    }
    _mm256_storeu_ps(p + i, _mm256_fmadd_ps(negLr, d, pi));
  }
  sgdScalar(p, g, buf, i, i1, s);
}
#else
// Not compiled off x86: never called there (isa().avx2_fma is false).
void sgdAvx2(float* p, const float* g, float* buf, size_t i0, size_t i1, const Sgd& s) {
  sgdScalar(p, g, buf, i0, i1, s);
}
#endif

// optimSgd(p, g, buf | null, n, weightDecay, momentum, oneMinusDampening, nesterov, negLr, first)
Napi::Value OptimSgd(const Napi::CallbackInfo& info) {
  Args x(info, "optimSgd");
  const int64_t n = x.count(3, "n");
  float* p = x.f32(0, "param", n);
  const float* g = x.f32(1, "grad", n);
  float* buf = x.is_null(2) ? nullptr : x.f32(2, "momentumBuffer", n);
  Sgd s{};
  s.wd = x.number(4, "weightDecay");
  s.momentum = x.number(5, "momentum");
  s.omd = x.number(6, "oneMinusDampening");
  s.nesterov = x.boolean(7, "nesterov");
  s.negLr = x.number(8, "negLr");
  s.first = x.boolean(9, "first");
  if (!x.ok()) return x.env().Undefined();
  const bool avx2 = isa().avx2_fma;
  parallel_for(static_cast<size_t>(n), [&](size_t i0, size_t i1) {
    if (avx2) sgdAvx2(p, g, buf, i0, i1, s);
    else sgdScalar(p, g, buf, i0, i1, s);
  }, kGrain);
  return x.env().Undefined();
}

// optimSumSquares(x, n) -> Σ x² in f64. Fixed chunks of 2^16 summed in order, so the result does not
// depend on the thread count (x² of an f32 is exact in f64; only the sums round).
Napi::Value OptimSumSquares(const Napi::CallbackInfo& info) {
  Args x(info, "optimSumSquares");
  const int64_t n = x.count(1, "n");
  const float* v = x.f32(0, "x", n);
  if (!x.ok()) return x.env().Undefined();
  constexpr size_t kChunk = 1 << 16;
  const size_t chunks = (static_cast<size_t>(n) + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  parallel_for(chunks, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      const size_t e = std::min(static_cast<size_t>(n), (c + 1) * kChunk);
      double acc[4] = {0, 0, 0, 0};
      size_t i = c * kChunk;
      for (; i + 4 <= e; i += 4)
        for (int l = 0; l < 4; ++l) acc[l] += static_cast<double>(v[i + l]) * v[i + l];
      for (; i < e; ++i) acc[0] += static_cast<double>(v[i]) * v[i];
      partial[c] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
  });
  double total = 0;
  for (double s : partial) total += s;
  return Napi::Number::New(x.env(), total);
}

// optimScale(x, n, factor): x *= f32(factor), in place.
Napi::Value OptimScale(const Napi::CallbackInfo& info) {
  Args x(info, "optimScale");
  const int64_t n = x.count(1, "n");
  float* v = x.f32(0, "x", n);
  const float k = static_cast<float>(x.number(2, "factor"));
  if (!x.ok()) return x.env().Undefined();
  parallel_for(static_cast<size_t>(n), [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) v[i] *= k;
  }, kGrain);
  return x.env().Undefined();
}

// optimQuantize8bit(qmap, ys, out, scalarOnly?): the exact code search on its own, AVX2 where available unless
// scalarOnly (tests compare both with the literal search).
Napi::Value OptimQuantize8bit(const Napi::CallbackInfo& info) {
  Args x(info, "optimQuantize8bit");
  const float* qmap = x.f32(0, "qmap", 256);
  const int64_t n = x.ok() && info.Length() > 1 && info[1].IsTypedArray()
                        ? static_cast<int64_t>(info[1].As<Napi::TypedArray>().ElementLength())
                        : 0;
  const float* ys = x.f32(1, "ys", n);
  uint8_t* out = x.u8(2, "out", n);
  if (!x.ok()) return x.env().Undefined();
  const bool scalar = !x.is_null(3) && x.boolean(3, "scalarOnly");
  if (!x.ok()) return x.env().Undefined();
  const auto hold = quantizerFor(qmap);
  const Quantizer& q = *hold;
  if (!scalar && isa().avx2_fma) quantizeArrayAvx2(q, ys, out, n);
  else
    for (int64_t j = 0; j < n; ++j) out[j] = q.quantize(ys[j]);
  return x.env().Undefined();
}

Register reg_adamw32("optimAdamW32", OptimAdamW32);
Register reg_adamw8("optimAdamW8bit", OptimAdamW8bit);
Register reg_lion32("optimLion32", OptimLion32);
Register reg_lion8("optimLion8bit", OptimLion8bit);
Register reg_sgd("optimSgd", OptimSgd);
Register reg_sumsq("optimSumSquares", OptimSumSquares);
Register reg_scale("optimScale", OptimScale);
Register reg_q8("optimQuantize8bit", OptimQuantize8bit);

}  // namespace
}  // namespace qlora
