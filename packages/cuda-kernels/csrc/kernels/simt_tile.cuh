// The register-blocked SIMT f32 GEMM tile shared by gemm.cu (sgemmKernel) and gemm4bit_f32.cu: a
// block of 256 threads computes a 64×64 C tile, each thread 4×4 outputs, from shared tiles sA [k][m]
// and sB [k][n] of SK = 16 k values (rows padded to 68 floats). The kernels differ only in how they
// fill the shared tiles.
#pragma once
#include <cstdint>

namespace qk {
namespace simt {

constexpr int SB = 64, SK = 16, LD = SB + 4;

// acc[i][j] += Σ_k sA[k][4·ty + i] · sB[k][4·tx + j] over the SK k values of the shared tiles.
__device__ __forceinline__ void fmaTile(const float (&sA)[SK][LD], const float (&sB)[SK][LD], int tx, int ty,
                                        float (&acc)[4][4]) {
#pragma unroll
  for (int k = 0; k < SK; ++k) {
    float ra[4], rb[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) ra[i] = sA[k][ty * 4 + i];
#pragma unroll
    for (int j = 0; j < 4; ++j) rb[j] = sB[k][tx * 4 + j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
  }
}

// The thread's 4×4 outputs into row-major C [M, N] (ld N), skipping those outside the matrix.
__device__ __forceinline__ void storeTile(const float (&acc)[4][4], float* c, int m0, int n0, int tx, int ty, int M,
                                          int N) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int gm = m0 + ty * 4 + i, gn = n0 + tx * 4 + j;
      if (gm < M && gn < N) c[int64_t(gm) * N + gn] = acc[i][j];
    }
}

}  // namespace simt
}  // namespace qk
