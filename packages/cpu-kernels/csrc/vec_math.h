// Per-ISA SIMD wrapper `V` and a vector exp, for kernel bodies compiled three times.
//
// Usage (an ISA translation unit):
//   #include <immintrin.h>                 // every system header first ...
//   #pragma GCC target("avx512f,...")       // ... then switch the ISA for the rest of the file
//   #define QLORA_VEC 512
//   #include "vec_math.h"                  // defines qlora::avx512::V (internal linkage)
//   #include "xxx_impl.h"                  // kernel bodies written against V
// Everything here is in an anonymous namespace, so the three copies never collide at link time
// and no AVX-512 code can leak into baseline callers through a shared inline function.
// QLORA_VEC: 512 (AVX-512F/BW/VL/DQ), 256 (AVX2+FMA), 128 (SSE4.2, the x86-64-v2 baseline).
// On arm64 every QLORA_VEC compiles to the NEON V below (4 lanes, fused multiply-add); isa.h reports no
// x86 feature there, so only level 0 (the "sse" namespace, i.e. the 128-bit baseline level) is dispatched.
#pragma once
#if defined(__aarch64__)
#include <arm_neon.h>
#else
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>

#if !defined(QLORA_VEC)
#error "define QLORA_VEC (512, 256 or 128) before including vec_math.h"
#endif

#if QLORA_VEC == 512
#define QLORA_NS avx512
// GCC 12 warns about _mm512_undefined_ps() inside its own headers under a target pragma (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#elif QLORA_VEC == 256
#define QLORA_NS avx2
#else
#define QLORA_NS sse
#endif

#define QLORA_INLINE inline __attribute__((always_inline))

namespace qlora {
namespace QLORA_NS {
namespace {

// Cephes expf constants: exp(x) = 2^n · p(r), r = x − n·ln2 (ln2 split in two for accuracy),
// p a degree-7 polynomial; relative error ≈ 2 ulp over the clamped range.
constexpr float kExpHi = 88.3762626647949f, kExpLo = -87.3365447504019f;
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500E-4f, kP1 = 1.3981999507E-3f, kP2 = 8.3334519073E-3f;
constexpr float kP3 = 4.1665795894E-2f, kP4 = 1.6666665459E-1f, kP5 = 5.0000001201E-1f;

#if defined(__aarch64__)
struct V {
  static constexpr int W = 4;
  using R = float32x4_t;
  static QLORA_INLINE R zero() { return vdupq_n_f32(0.0f); }
  static QLORA_INLINE R set1(float a) { return vdupq_n_f32(a); }
  static QLORA_INLINE R load(const float* p) { return vld1q_f32(p); }
  static QLORA_INLINE void store(float* p, R a) { vst1q_f32(p, a); }
  static QLORA_INLINE R add(R a, R b) { return vaddq_f32(a, b); }
  static QLORA_INLINE R sub(R a, R b) { return vsubq_f32(a, b); }
  static QLORA_INLINE R mul(R a, R b) { return vmulq_f32(a, b); }
  static QLORA_INLINE R div(R a, R b) { return vdivq_f32(a, b); }
  static QLORA_INLINE R fma(R a, R b, R c) { return vfmaq_f32(c, a, b); }
  static QLORA_INLINE R max(R a, R b) { return vmaxq_f32(a, b); }  // NaN in either lane gives NaN
  static QLORA_INLINE R min(R a, R b) { return vminq_f32(a, b); }
  static QLORA_INLINE R round(R a) { return vrndnq_f32(a); }  // to nearest, ties to even (as _MM_FROUND_TO_NEAREST_INT)
  static QLORA_INLINE float hsum(R a) { return vaddvq_f32(a); }
  static QLORA_INLINE float hmax(R a) { return vmaxvq_f32(a); }
  static QLORA_INLINE R pow2(R n) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23));
  }
  // Lanes where x < lo become 0; NaN lanes keep r (like _CMP_NLT_UQ on x86).
  static QLORA_INLINE R zero_below(R x, R lo, R r) {
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), vcltq_f32(x, lo)));
  }
};
#elif QLORA_VEC == 512
struct V {
  static constexpr int W = 16;
  using R = __m512;
  static QLORA_INLINE R zero() { return _mm512_setzero_ps(); }
  static QLORA_INLINE R set1(float a) { return _mm512_set1_ps(a); }
  static QLORA_INLINE R load(const float* p) { return _mm512_loadu_ps(p); }
  static QLORA_INLINE void store(float* p, R a) { _mm512_storeu_ps(p, a); }
  static QLORA_INLINE R add(R a, R b) { return _mm512_add_ps(a, b); }
  static QLORA_INLINE R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static QLORA_INLINE R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static QLORA_INLINE R div(R a, R b) { return _mm512_div_ps(a, b); }
  static QLORA_INLINE R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static QLORA_INLINE R max(R a, R b) { return _mm512_max_ps(a, b); }
  static QLORA_INLINE R min(R a, R b) { return _mm512_min_ps(a, b); }
  static QLORA_INLINE R round(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static QLORA_INLINE float hsum(R a) { return _mm512_reduce_add_ps(a); }
  static QLORA_INLINE float hmax(R a) { return _mm512_reduce_max_ps(a); }
  // 2^n for integral-valued float n in [-127, 128].
  static QLORA_INLINE R pow2(R n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  // Lanes where x < lo become 0 (exp underflow), others keep r.
  static QLORA_INLINE R zero_below(R x, R lo, R r) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ), r); }
};
#elif QLORA_VEC == 256
struct V {
  static constexpr int W = 8;
  using R = __m256;
  static QLORA_INLINE R zero() { return _mm256_setzero_ps(); }
  static QLORA_INLINE R set1(float a) { return _mm256_set1_ps(a); }
  static QLORA_INLINE R load(const float* p) { return _mm256_loadu_ps(p); }
  static QLORA_INLINE void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  static QLORA_INLINE R add(R a, R b) { return _mm256_add_ps(a, b); }
  static QLORA_INLINE R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static QLORA_INLINE R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static QLORA_INLINE R div(R a, R b) { return _mm256_div_ps(a, b); }
  static QLORA_INLINE R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static QLORA_INLINE R max(R a, R b) { return _mm256_max_ps(a, b); }
  static QLORA_INLINE R min(R a, R b) { return _mm256_min_ps(a, b); }
  static QLORA_INLINE R round(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static QLORA_INLINE float hsum(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static QLORA_INLINE float hmax(R a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static QLORA_INLINE R pow2(R n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static QLORA_INLINE R zero_below(R x, R lo, R r) { return _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_NLT_UQ), r); }
};
#else
struct V {
  static constexpr int W = 4;
  using R = __m128;
  static QLORA_INLINE R zero() { return _mm_setzero_ps(); }
  static QLORA_INLINE R set1(float a) { return _mm_set1_ps(a); }
  static QLORA_INLINE R load(const float* p) { return _mm_loadu_ps(p); }
  static QLORA_INLINE void store(float* p, R a) { _mm_storeu_ps(p, a); }
  static QLORA_INLINE R add(R a, R b) { return _mm_add_ps(a, b); }
  static QLORA_INLINE R sub(R a, R b) { return _mm_sub_ps(a, b); }
  static QLORA_INLINE R mul(R a, R b) { return _mm_mul_ps(a, b); }
  static QLORA_INLINE R div(R a, R b) { return _mm_div_ps(a, b); }
  static QLORA_INLINE R fma(R a, R b, R c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }  // no FMA in x86-64-v2
  static QLORA_INLINE R max(R a, R b) { return _mm_max_ps(a, b); }
  static QLORA_INLINE R min(R a, R b) { return _mm_min_ps(a, b); }
  static QLORA_INLINE R round(R a) { return _mm_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static QLORA_INLINE float hsum(R s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static QLORA_INLINE float hmax(R s) {
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static QLORA_INLINE R pow2(R n) {
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
  }
  static QLORA_INLINE R zero_below(R x, R lo, R r) { return _mm_and_ps(_mm_cmpnlt_ps(x, lo), r); }
};
#endif

// Vector exp: exact 0 below the underflow bound, saturates (finite) above the overflow bound.
QLORA_INLINE V::R vexp(V::R x) {
  const V::R lo = V::set1(kExpLo);
  V::R xc = V::min(V::set1(kExpHi), V::max(lo, x));  // operand order keeps NaN (maxps returns the 2nd on NaN)
  V::R n = V::round(V::mul(xc, V::set1(kLog2e)));
  V::R r = V::fma(n, V::set1(-kLn2Hi), xc);
  r = V::fma(n, V::set1(-kLn2Lo), r);
  V::R p = V::set1(kP0);
  p = V::fma(p, r, V::set1(kP1));
  p = V::fma(p, r, V::set1(kP2));
  p = V::fma(p, r, V::set1(kP3));
  p = V::fma(p, r, V::set1(kP4));
  p = V::fma(p, r, V::set1(kP5));
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::zero_below(x, lo, V::mul(p, V::pow2(n)));
}

// Scalar twin of vexp for loop tails, so a row gives the same values whatever its length.
QLORA_INLINE float sexp(float x) {
  if (!(x >= kExpLo)) return x != x ? x : 0.0f;
  float xc = x > kExpHi ? kExpHi : x;
  float n = __builtin_nearbyintf(xc * kLog2e);
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kP0;
  p = p * r + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  p = p * (r * r) + (r + 1.0f);
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace
}  // namespace QLORA_NS
}  // namespace qlora
