// Small-m 4-bit GEMV: y[m, n] = x[m, k] . dequant(W)^T streaming the packed weight once.
#pragma once
#include <cstdint>

#include "nf4_format.h"

namespace qlora {

constexpr int64_t kNf4GemvMaxM = 4;

// Returns false (and writes nothing) when the fast path does not apply: m > 4, no AVX2/AVX-512,
// or rows that do not start on a block boundary (k % blocksize != 0) / blocks not a multiple of
// the SIMD chunk (blocksize % 32: every bitsandbytes blocksize). Callers then use the tiled GEMM.
bool nf4_gemv(const Quant4& q, const float* x, int64_t m, float* y);

}  // namespace qlora
