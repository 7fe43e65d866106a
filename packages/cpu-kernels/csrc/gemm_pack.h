// Packing helpers shared by the dense and the 4-bit GEMM front ends (gemm.cc, nf4_gemm.cc).
#pragma once
#include <cstdint>

namespace qlora {

// Packs rows [0, rows) x columns [0, kc) of a row-major f32 matrix (row stride ld) as one A sliver:
// dst[p * mr + i] = src[i * ld + p], rows rows..mr-1 zero. mr = 6 with AVX2 (the AVX2 micro-kernel)
// goes through 8x8 register transposes (one 48-float run per 8 columns instead of 48 scalar
// strided stores: this pack was ~0.5 ns per element, repeated once per N task); other shapes are scalar.
void pack_a_rows_f32(const float* src, int64_t ld, int64_t rows, int64_t kc, int mr, float* dst);

}  // namespace qlora
