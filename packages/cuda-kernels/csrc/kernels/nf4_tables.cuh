// bitsandbytes 4-bit code tables and thresholds as float32 bit patterns (spec bnb-4bit-format §1, §2.2).
// Written as hex so that no decimal-to-float conversion can move a threshold by an ulp.
#pragma once
#include <cstdint>

namespace qk {

__device__ __constant__ static const uint32_t kNf4Bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u};
__device__ __constant__ static const uint32_t kFp4Bits[16] = {
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u};
// NF4 thresholds T_k (ascending): code = #{k : y > T_k}.
__device__ __constant__ static const uint32_t kNf4ThresholdBits[15] = {
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
    0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau};

__device__ __forceinline__ uint8_t quantizeNf4(float y) {
  uint8_t code = 0;
#pragma unroll
  for (int k = 0; k < 15; ++k) code += (y > __uint_as_float(kNf4ThresholdBits[k])) ? 1 : 0;
  return code;  // NaN: every comparison false → 0, as in CUDA bitsandbytes
}

// FP4 (dQuantizeFP4): the CUDA literals, not the exact midpoints (spec §2.2 table).
__device__ __forceinline__ uint8_t quantizeFp4(float y) {
  const uint8_t sign = y < 0.f ? 8 : 0;
  const float a = fabsf(y);
  uint8_t mag;
  if (a > __uint_as_float(0x3e955555u)) {        // 0.29166667
    if (a > __uint_as_float(0x3f155550u))        // 0.583333
      mag = a > __uint_as_float(0x3f555555u) ? 3 : 2;  // 0.8333333
    else
      mag = a > __uint_as_float(0x3ed55556u) ? 5 : 4;  // 0.4166667
  } else {
    if (a > __uint_as_float(0x3db00000u))        // 0.0859375
      mag = a > __uint_as_float(0x3e555555u) ? 7 : 6;  // 0.20833333
    else
      mag = a > __uint_as_float(0x3b2aaab9u) ? 1 : 0;  // 0.00260417
  }
  return mag + sign;
}

}  // namespace qk
