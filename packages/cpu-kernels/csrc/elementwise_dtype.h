// Host dtype codes shared with src/fused.ts, and the element conversions `copy`/`fill` use.
// Conversions follow what the reference backend does through JS typed arrays: f32 rounds to
// nearest-even, i32/u8 truncate toward zero and wrap (ToInt32/ToUint8; NaN and ±inf → 0), bool is
// x ≠ 0, bf16/f16 round to nearest-even with quiet NaNs (packages/tensor/src/internal/half.ts).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace qlora {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, U8 = 4, Bool = 5 };

inline uint32_t f32_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
inline float bits_f32(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

inline uint16_t f32_to_bf16(float x) {
  uint32_t b = f32_bits(x);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu)) return static_cast<uint16_t>((b >> 16) | 0x40);
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_f16(float x) {
  uint32_t b = f32_bits(x);
  uint32_t sign = (b >> 16) & 0x8000u, exp = (b >> 23) & 0xffu, mant = b & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {  // subnormal half or zero
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    int shift = 14 - e;
    uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (mant >> 13), rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // a carry into the exponent is correct
  return static_cast<uint16_t>(sign | half);
}
inline float f16_to_f32(uint16_t h) {
  float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  if (exp == 0x1f) return mant ? std::nanf("") : sign * INFINITY;
  return sign * std::ldexp(1.0f + static_cast<float>(mant) / 1024.0f, static_cast<int>(exp) - 15);
}

// ECMAScript ToInt32 / ToUint8 on a double: truncate, wrap modulo 2^32 / 2^8, NaN/inf → 0.
inline uint32_t to_uint32_wrap(double x) {
  if (!std::isfinite(x)) return 0;
  double t = std::trunc(x);
  double m = std::fmod(t, 4294967296.0);
  if (m < 0) m += 4294967296.0;
  return static_cast<uint32_t>(m);
}

inline double load_elem(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::U8:
    case DType::Bool: return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

inline void store_elem(void* base, DType t, int64_t i, double x) {
  switch (t) {
    case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(x); break;
    case DType::F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(static_cast<float>(x)); break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(static_cast<float>(x)); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(to_uint32_wrap(x)); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(to_uint32_wrap(x) & 0xffu); break;
    case DType::Bool: static_cast<uint8_t*>(base)[i] = x != 0 ? 1 : 0; break;
  }
}

inline int dtype_bytes(DType t) {
  switch (t) {
    case DType::F32:
    case DType::I32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    default: return 1;
  }
}

}  // namespace qlora
