// Scalar-friendly run decoder used by the 4-bit GEMM packers. Its cost is O(n*k) per GEMM
// (amortised over m rows of x), so clarity wins over SIMD here; the GEMV path has its own
// vectorised decoder (nf4_gemv.cc).
#include <algorithm>

#include "nf4_format.h"

namespace qlora {

void nf4_decode_run(const Quant4& q, int64_t start, int64_t count, float* out) {
  const float* lut = q.lut;
  while (count > 0) {
    const int64_t block = start / q.blocksize;
    const int64_t seg = std::min(count, (block + 1) * q.blocksize - start);
    const float scale = q.absmax_at(block);
    int64_t e = start, i = 0;
    if (e & 1) {  // starts on a low nibble
      out[i++] = lut[q.codes[e >> 1] & 15] * scale;
      ++e;
    }
    for (; i + 1 < seg; i += 2, e += 2) {  // whole bytes: high nibble first
      const uint8_t byte = q.codes[e >> 1];
      out[i] = lut[byte >> 4] * scale;
      out[i + 1] = lut[byte & 15] * scale;
    }
    if (i < seg) out[i++] = lut[q.codes[e >> 1] >> 4] * scale;  // ends on a high nibble
    out += seg;
    start += seg;
    count -= seg;
  }
}

}  // namespace qlora
