// 4-bit quantization on load: f32 / bf16 / f16 weights -> bitsandbytes NF4 or FP4 (packed codes + f32
// absmax per block), and the 8-bit double quantization of that absmax. Byte-exact with @qlora/nf4's
// quantize4bit / doubleQuantize (packages/nf4/src/quantize.ts, internal/kernel4.ts), which are byte-exact
// with bitsandbytes' CUDA kernel (spec bnb-4bit-format.md §2-§5). The TypeScript codec stays the
// reference and the fallback (reference backend, browsers); test/quantize-nf4.test.ts compares the two.
//
// Why the literal formula is exact here: per block absmax m = max |x| over non-NaN elements (on the
// integer bit patterns, as kernel4.ts does; a full block without any non-NaN value gives -FLT_MAX, a
// partial one 0), r = fl32(1/m) (IEEE division; TS's fround(1/m) rounds twice, which is innocuous for
// a quotient of float32 values), y = fl32(x * r) (one float multiply), code = number of thresholds
// strictly below y with ordered compares (NaN -> 0; FP4: |y| against its thresholds, sign bit when
// y < 0). No fast-math, no FTZ, no contraction (there is no a*b+c here): scalar and AVX2 agree.
//
// bf16/f16 input is widened block by block into a small stack buffer (never the whole tensor); blocks
// are independent, so threads split the tensor by blocks and the result does not depend on the count.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

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

constexpr int64_t kMaxBlock = 4096;  // largest bitsandbytes 4-bit blocksize

inline float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// The float32 decision literals of bitsandbytes' dQuantizeNF4 / dQuantizeFP4 (= @qlora/nf4 tables.ts).
const uint32_t kNf4ThresholdBits[15] = {0xbf591cd8, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec,
                                        0xbe0d38bc, 0xbd3a7871, 0x3d22faff, 0x3df64862, 0x3e5067e0,
                                        0x3e9582d4, 0x3ec753f9, 0x3f006d04, 0x3f248daf, 0x3f5c89da};
const uint32_t kFp4ThresholdBits[7] = {0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555,
                                       0x3ed55556, 0x3f155550, 0x3f555555};
// FP4 magnitude code for "number of thresholds strictly below |y|".
const int32_t kFp4CodeByRank[8] = {0, 1, 6, 7, 4, 5, 2, 3};

enum class InKind : int32_t { F32 = 0, BF16 = 1, F16 = 2 };

// ---------------------------------------------------------------------------------------------
// Scalar path (any CPU; also the tail of every tensor whose length is not a multiple of the block).

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1f;
  uint32_t m = h & 0x3ffu;
  if (e == 0x1f) return from_bits(sign | 0x7f800000u | (m << 13));
  if (e != 0) return from_bits(sign | ((e + 112) << 23) | (m << 13));
  if (m == 0) return from_bits(sign);
  uint32_t exp = 113;  // subnormal half: normalise
  while ((m & 0x400u) == 0) m <<= 1, --exp;
  return from_bits(sign | (exp << 23) | ((m & 0x3ffu) << 13));
}

void widen_scalar(const void* in, InKind kind, int64_t start, int64_t len, float* out) {
  if (kind == InKind::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(in) + start;
    for (int64_t i = 0; i < len; ++i) out[i] = from_bits(static_cast<uint32_t>(s[i]) << 16);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(in) + start;
    for (int64_t i = 0; i < len; ++i) out[i] = f16_to_f32(s[i]);
  }
}

// CUDA's absmax: fmaxf over |x| from -FLT_MAX, so NaN is ignored. On bit patterns: |x| orders like
// bits & 0x7fffffff for non-NaN values; NaN lanes become -1 and never win.
float absmax_scalar(const float* x, int64_t len, bool full) {
  int32_t m = -1;
  for (int64_t i = 0; i < len; ++i) {
    const int32_t b = static_cast<int32_t>(to_bits(x[i]) & 0x7fffffffu);
    if (b <= 0x7f800000 && b > m) m = b;
  }
  if (m < 0) return full ? -std::numeric_limits<float>::max() : 0.0f;
  return from_bits(static_cast<uint32_t>(m));
}

inline uint8_t nf4_code(float y) {
  uint8_t c = 0;
  for (int t = 0; t < 15; ++t) c += y > from_bits(kNf4ThresholdBits[t]) ? 1 : 0;
  return c;
}
inline uint8_t fp4_code(float y) {
  const float a = std::fabs(y);
  int rank = 0;
  for (int t = 0; t < 7; ++t) rank += a > from_bits(kFp4ThresholdBits[t]) ? 1 : 0;
  return static_cast<uint8_t>(kFp4CodeByRank[rank] | (y < 0.0f ? 8 : 0));
}

// Codes of x[0, len) scaled by r into out (element 2j in the high nibble); an odd last element is
// paired with the code of 0·r, as the CUDA kernel's zero padding gives.
void codes_scalar(const float* x, int64_t len, float r, bool nf4, uint8_t* out) {
  auto code = [nf4](float y) { return nf4 ? nf4_code(y) : fp4_code(y); };
  int64_t i = 0;
  for (; i + 2 <= len; i += 2) *out++ = static_cast<uint8_t>(code(x[i] * r) << 4 | code(x[i + 1] * r));
  if (i < len) *out = static_cast<uint8_t>(code(x[i] * r) << 4 | code(0.0f * r));
}

// ---------------------------------------------------------------------------------------------
// AVX2 path: whole blocks (every blocksize is a multiple of 32), 32 elements per step.

#if defined(__x86_64__)
// bf16 -> f32: the 16 bits become the high half of the float (exact).
__attribute__((target("avx2"))) inline void widen_bf16_avx2(const void* in, int64_t start, int64_t len, float* out) {
  const uint16_t* s = static_cast<const uint16_t*>(in) + start;
  for (int64_t i = 0; i < len; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
}

// f16 -> f32 with F16C (exact, subnormals included; NaN stays NaN, which only ever meets the NaN policy).
__attribute__((target("avx2,f16c"))) inline void widen_f16c(const void* in, int64_t start, int64_t len, float* out) {
  const uint16_t* s = static_cast<const uint16_t*>(in) + start;
  for (int64_t i = 0; i < len; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
}

__attribute__((target("avx2"))) inline float absmax_avx2(const float* x, int64_t len) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  __m256i m0 = _mm256_set1_epi32(-1), m1 = m0;
  for (int64_t i = 0; i < len; i += 16) {
    __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask);
    __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)), abs_mask);
    a = _mm256_or_si256(a, _mm256_cmpgt_epi32(a, inf));  // NaN -> -1
    b = _mm256_or_si256(b, _mm256_cmpgt_epi32(b, inf));
    m0 = _mm256_max_epi32(m0, a);
    m1 = _mm256_max_epi32(m1, b);
  }
  m0 = _mm256_max_epi32(m0, m1);
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1));
  const int32_t best = _mm_cvtsi128_si32(m);
  if (best < 0) return -std::numeric_limits<float>::max();  // a full block of NaN
  return from_bits(static_cast<uint32_t>(best));
}

// 8 NF4 codes as int32 lanes: the binary search of @qlora/nf4's nf4Code (c = 8·[y > T7], then + 4·[y > T(c+3)],
// + 2·[y > T(c+1)], + [y > T(c)]), each level's threshold picked per lane with vpermd from an 8-entry table.
// Same comparisons as counting the thresholds below y (the thresholds ascend); NaN compares false: code 0.
struct Nf4Search {
  __m256 t7;
  __m256i t3, t1, t0;  // [T3, T11], [T1, T5, T9, T13], [T0, T2, …, T14] as float bits
};
__attribute__((target("avx2"))) inline Nf4Search nf4_search() {
  const float* t = reinterpret_cast<const float*>(kNf4ThresholdBits);
  Nf4Search s;
  s.t7 = _mm256_set1_ps(t[7]);
  s.t3 = _mm256_castps_si256(_mm256_setr_ps(t[3], t[11], 0, 0, 0, 0, 0, 0));
  s.t1 = _mm256_castps_si256(_mm256_setr_ps(t[1], t[5], t[9], t[13], 0, 0, 0, 0));
  s.t0 = _mm256_castps_si256(_mm256_setr_ps(t[0], t[2], t[4], t[6], t[8], t[10], t[12], t[14]));
  return s;
}
__attribute__((target("avx2"))) inline __m256i nf4_codes8(__m256 y, const Nf4Search& s) {
  const auto gt = [&](__m256i table, __m256i idx) {
    const __m256 t = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(table, idx));
    return _mm256_castps_si256(_mm256_cmp_ps(y, t, _CMP_GT_OQ));
  };
  __m256i c = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(y, s.t7, _CMP_GT_OQ)), _mm256_set1_epi32(8));
  c = _mm256_or_si256(c, _mm256_and_si256(gt(s.t3, _mm256_srli_epi32(c, 3)), _mm256_set1_epi32(4)));
  c = _mm256_or_si256(c, _mm256_and_si256(gt(s.t1, _mm256_srli_epi32(c, 2)), _mm256_set1_epi32(2)));
  return _mm256_or_si256(c, _mm256_and_si256(gt(s.t0, _mm256_srli_epi32(c, 1)), _mm256_set1_epi32(1)));
}
__attribute__((target("avx2"))) inline __m256i fp4_codes8(__m256 y, const __m256* thr, __m256i by_rank) {
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y);
  __m256i rank = _mm256_setzero_si256();
  for (int t = 0; t < 7; ++t) rank = _mm256_sub_epi32(rank, _mm256_castps_si256(_mm256_cmp_ps(a, thr[t], _CMP_GT_OQ)));
  const __m256i mag = _mm256_permutevar8x32_epi32(by_rank, rank);
  const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_or_si256(mag, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
}

// 32 codes (int32 lanes, 4 vectors in element order) -> 16 packed bytes.
__attribute__((target("avx2"))) inline void pack32(__m256i c0, __m256i c1, __m256i c2, __m256i c3, uint8_t* out) {
  const __m256i w01 = _mm256_packs_epi32(c0, c1), w23 = _mm256_packs_epi32(c2, c3);
  // bytes per 128-bit lane: c0[0..3] c1[0..3] c2[0..3] c3[0..3] | c0[4..7] c1[4..7] c2[4..7] c3[4..7]
  __m256i b = _mm256_packus_epi16(w01, w23);
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // element order
  const __m256i pairs = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x0110));  // 16·even + odd
  const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs, pairs), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(bytes));
}

// The per-call constants of the AVX2 code search (built once per thread's range of blocks, not per block).
struct Avx2Tables {
  __m256 fp4_thr[7];
  Nf4Search nf4;
  __m256i fp4_by_rank;
};
__attribute__((target("avx2"))) inline Avx2Tables avx2_tables() {
  Avx2Tables t;
  for (int i = 0; i < 7; ++i) t.fp4_thr[i] = _mm256_set1_ps(from_bits(kFp4ThresholdBits[i]));
  t.nf4 = nf4_search();
  t.fp4_by_rank = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kFp4CodeByRank));
  return t;
}

__attribute__((target("avx2"))) inline void codes_avx2(const float* x, int64_t len, float r, bool nf4, uint8_t* out,
                                                        const Avx2Tables& t) {
  const __m256 rv = _mm256_set1_ps(r);
  for (int64_t i = 0; i < len; i += 32) {
    __m256i c[4];
    for (int v = 0; v < 4; ++v) {
      const __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * v), rv);
      c[v] = nf4 ? nf4_codes8(y, t.nf4) : fp4_codes8(y, t.fp4_thr, t.fp4_by_rank);
    }
    pack32(c[0], c[1], c[2], c[3], out + i / 2);
  }
}
#endif

// ---------------------------------------------------------------------------------------------

struct Job {
  const void* in;
  InKind kind;
  int64_t n, blocksize;
  bool nf4, avx2, f16c;
  uint8_t* packed;
  float* absmax;
};

// One block on the scalar path (any CPU; the partial last block on every CPU).
void block_scalar(const Job& j, int64_t b, float* buf) {
  const int64_t start = b * j.blocksize, len = std::min(j.blocksize, j.n - start);
  const float* x = static_cast<const float*>(j.in) + start;
  if (j.kind != InKind::F32) widen_scalar(j.in, j.kind, start, len, buf), x = buf;
  const float m = absmax_scalar(x, len, len == j.blocksize);
  j.absmax[b] = m;
  codes_scalar(x, len, 1.0f / m, j.nf4, j.packed + start / 2);
}

#if defined(__x86_64__)
// Blocks [b0, b1) with AVX2: widen (bf16 by a shift, f16 by F16C where the CPU has it), absmax, codes. The
// search constants are set up once for the whole range.
__attribute__((target("avx2,f16c"))) void blocks_avx2(const Job& j, int64_t b0, int64_t b1, float* buf) {
  const Avx2Tables t = avx2_tables();
  const int64_t bs = j.blocksize;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * bs;
    if (j.n - start < bs) {
      block_scalar(j, b, buf);
      continue;
    }
    const float* x = static_cast<const float*>(j.in) + start;
    if (j.kind == InKind::BF16) widen_bf16_avx2(j.in, start, bs, buf), x = buf;
    else if (j.kind == InKind::F16 && j.f16c) widen_f16c(j.in, start, bs, buf), x = buf;
    else if (j.kind == InKind::F16) widen_scalar(j.in, j.kind, start, bs, buf), x = buf;
    const float m = absmax_avx2(x, bs);
    j.absmax[b] = m;
    codes_avx2(x, bs, 1.0f / m, j.nf4, j.packed + start / 2, t);
  }
}
#endif

void quantize_blocks(const Job& j, int64_t b0, int64_t b1) {
  alignas(32) float buf[kMaxBlock];
#if defined(__x86_64__)
  if (j.avx2) return blocks_avx2(j, b0, b1, buf);
#endif
  for (int64_t b = b0; b < b1; ++b) block_scalar(j, b, buf);
}

// Typed-array argument i of `type` with at least `need` elements, or null after reporting the error through
// `x`. Read with napi_get_typedarray_info, which also serves arrays on a SharedArrayBuffer (the model loader's
// read buffers are shared with its worker threads); Args::array goes through ArrayBuffer().Data(), which
// fails on those.
template <typename T>
T* typed(Args& x, const Napi::CallbackInfo& info, size_t i, const char* name, napi_typedarray_type type,
         int64_t need, const char* expected) {
  if (!x.ok()) return nullptr;
  napi_typedarray_type t;
  size_t length = 0;
  void* data = nullptr;
  if (i >= info.Length() || !info[i].IsTypedArray() ||
      napi_get_typedarray_info(info.Env(), info[i], &t, &length, &data, nullptr, nullptr) != napi_ok || t != type) {
    x.fail_type(name, expected);
    return nullptr;
  }
  if (static_cast<int64_t>(length) < need) {
    x.fail_range(name, ("at least " + std::to_string(need) + " elements, got " + std::to_string(length)).c_str());
    return nullptr;
  }
  return static_cast<T*>(data);
}

int64_t typed_length(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() && info[i].IsTypedArray()
             ? static_cast<int64_t>(info[i].As<Napi::TypedArray>().ElementLength())
             : 0;
}

int32_t isa_choice(Args& x, size_t i) {
  if (x.is_null(i)) return -1;
  return x.int32(i, "isa");
}

// quantize4bit(input, inputKind 0 f32 | 1 bf16 | 2 f16, quantType 0 nf4 | 1 fp4, blocksize, packed, absmax,
//              isa? -1 auto | 0 scalar | 1 avx2)
// packed: ceil(n/2) bytes, absmax: ceil(n/blocksize) floats (before double quantization).
Napi::Value Quantize4bit(const Napi::CallbackInfo& info) {
  Args x(info, "quantize4bit");
  const int32_t kind = x.int32(1, "inputKind");
  if (x.ok() && (kind < 0 || kind > 2)) x.fail_range("inputKind", "0 (f32), 1 (bf16) or 2 (f16)");
  const int32_t qtype = x.int32(2, "quantType");
  if (x.ok() && qtype != 0 && qtype != 1) x.fail_range("quantType", "0 (nf4) or 1 (fp4)");
  const int64_t bs = x.count(3, "blocksize");
  if (x.ok() && (bs < 32 || bs > kMaxBlock || (bs & (bs - 1)) != 0))
    x.fail_range("blocksize", "a power of two from 32 to 4096");
  const int64_t n = typed_length(info, 0);
  const void* in = nullptr;
  if (kind == 0) in = typed<float>(x, info, 0, "input", napi_float32_array, 0, "a Float32Array");
  else in = typed<uint16_t>(x, info, 0, "input", napi_uint16_array, 0, "a Uint16Array");
  auto* packed = typed<uint8_t>(x, info, 4, "packed", napi_uint8_array, (n + 1) / 2, "a Uint8Array");
  const int64_t blocks_needed = bs > 0 ? (n + bs - 1) / bs : 0;
  auto* absmax = typed<float>(x, info, 5, "absmax", napi_float32_array, blocks_needed, "a Float32Array");
  const int32_t want = isa_choice(x, 6);
  if (x.ok() && (want < -1 || want > 1)) x.fail_range("isa", "-1 (auto), 0 (scalar) or 1 (avx2)");
  if (x.ok() && want == 1 && !isa().avx2_fma) x.fail_range("isa", "runnable on this CPU (it lacks AVX2)");
  if (!x.ok()) return x.env().Undefined();
  Job j{in, static_cast<InKind>(kind), n, bs, qtype == 0, want != 0 && isa().avx2_fma, false, packed, absmax};
#if defined(__x86_64__)
  j.f16c = __builtin_cpu_supports("f16c");
#endif
  const int64_t blocks = (n + bs - 1) / bs;
  // ≥ 32 Ki elements per part: smaller tensors are not worth waking the pool.
  parallel_for(static_cast<size_t>(blocks), [&](size_t b0, size_t b1) {
    quantize_blocks(j, static_cast<int64_t>(b0), static_cast<int64_t>(b1));
  }, static_cast<size_t>(std::max<int64_t>(1, (1 << 15) / bs)));
  return x.env().Undefined();
}

// doubleQuantize8bit(absmax, code[256], qabsmax, nestedAbsmax) -> offset. Spec §5.1: offset = fl32(mean)
// (float64 sum in index order, as @qlora/nf4 doubleQuantize), then 8-bit blockwise quantization (blocks
// of 256, CUDA absmax semantics) of fl32(absmax - offset) with `code`.
Napi::Value DoubleQuantize8bit(const Napi::CallbackInfo& info) {
  Args x(info, "doubleQuantize8bit");
  const int64_t nb = typed_length(info, 0);
  const auto* a = typed<float>(x, info, 0, "absmax", napi_float32_array, 0, "a Float32Array");
  const auto* code = typed<float>(x, info, 1, "code", napi_float32_array, 256, "a Float32Array");
  auto* q = typed<uint8_t>(x, info, 2, "qabsmax", napi_uint8_array, nb, "a Uint8Array");
  auto* nested = typed<float>(x, info, 3, "nestedAbsmax", napi_float32_array, (nb + 255) / 256, "a Float32Array");
  if (!x.ok()) return x.env().Undefined();
  double sum = 0;
  for (int64_t i = 0; i < nb; ++i) sum += a[i];
  const float offset = nb == 0 ? 0.0f : static_cast<float>(sum / static_cast<double>(nb));
  const int64_t blocks = (nb + 255) / 256;
  parallel_for(static_cast<size_t>(blocks), [&](size_t b0, size_t b1) {
    for (int64_t b = static_cast<int64_t>(b0); b < static_cast<int64_t>(b1); ++b) {
      const int64_t s = b * 256, e = std::min(nb, s + 256);
      float m = e - s == 256 ? -std::numeric_limits<float>::max() : 0.0f;
      for (int64_t i = s; i < e; ++i) {
        const float v = std::fabs(a[i] - offset);
        if (v > m) m = v;
      }
      nested[b] = m;
      const float r = 1.0f / m;
      for (int64_t i = s; i < e; ++i) q[i] = quantize8bit_literal(code, (a[i] - offset) * r);
    }
  }, 16);
  return Napi::Number::New(x.env(), offset);
}

Register reg_quantize4bit("quantize4bit", Quantize4bit);
Register reg_double_quantize8bit("doubleQuantize8bit", DoubleQuantize8bit);

}  // namespace
}  // namespace qlora
