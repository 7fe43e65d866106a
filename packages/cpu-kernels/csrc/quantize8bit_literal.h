// bitsandbytes' dQuantize<0>: the nearest entry of an ascending 256-entry map by float32 midpoints, ties to
// the even index (the function @qlora/nf4's quantize8bitValue implements). The one copy shared by the
// optimizer's 8-bit states (optim.cc, which also builds its fast table from it) and the double
// quantization of 4-bit absmax (quantize_nf4.cc). No a*b+c here, so FP contraction cannot change it.
#pragma once

#include <cstdint>

namespace qlora {

inline uint8_t quantize8bit_literal(const float* c, float y) {
  int pivot = 127, lo = 0, hi = 255;
  float lower = -1.0f, upper = 1.0f, val = c[127];
  for (int s = 64; s > 0; s >>= 1) {
    if (y > val) {
      lo = pivot;
      lower = val;
      pivot += s;
    } else {
      hi = pivot;
      upper = val;
      pivot -= s;
    }
    val = c[pivot];
  }
  if (hi == 255) upper = c[255];
  if (lo == 0) lower = c[0];
  if (y > val) {
    const float mid = (upper + val) * 0.5f;
    return static_cast<uint8_t>(y > mid ? hi : pivot);
  }
  const float mid = (lower + val) * 0.5f;
  return static_cast<uint8_t>(y < mid ? lo : pivot);
}

}  // namespace qlora
