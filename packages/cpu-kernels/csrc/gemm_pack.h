// Packing helpers shared by the dense and the 4-bit GEMM front ends (gemm.cc, nf4_gemm.cc).
#pragma once
#include <cstdint>

namespace qlora {

// Packs rows [0, rows) x columns [0, kc) of a row-major f32 matrix (row stride ld) as one A sliver:
// dst[p * mr + i] = src[i * ld + p], rows rows..mr-1 zero. Full slivers of mr = 6 (the AVX2 micro-kernel)
// and mr = 12 (AVX-512) go through 8x8 register transposes on AVX2 CPUs (one contiguous run per 8
// columns instead of 8 * mr scalar strided stores: the scalar pack was ~0.5 ns per element, repeated
// once per N task); other shapes are scalar.
void pack_a_rows_f32(const float* src, int64_t ld, int64_t rows, int64_t kc, int mr, float* dst);

}  // namespace qlora
