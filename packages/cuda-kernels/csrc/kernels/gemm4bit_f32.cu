// Exact-f32 4-bit matmul (the reference backend's numerics: W dequantized to f32, f32 GEMM) without a
// dequantized copy of W: a SIMT f32 GEMM (simt_tile.cuh, the tile of gemm.cu's sgemmKernel) whose B tile loader
// dequantizes each element as fl32(LUT[code] · absmax) — exactly dequantize4bit(..., f32) — while
// filling shared memory. Device memory bound: nothing beyond x and y (the weight is read in place).
// The path without cuBLAS; with cuBLAS, gemm4bitF32 (gemm_nf4.cu) uses bounded f32 panels + SGEMM.
// Reference: dequantize4bit(f32) → host f64 GEMM (dev/check_gemm_pipeline.cu). Compiled, unverified.
#include "common.cuh"
#include "kernels.h"
#include "simt_tile.cuh"
#include "nf4_tables.cuh"

namespace qk {
namespace {

using simt::SB;
using simt::SK;

// The same two roundings as nf4.cu's blockAbsmax: fl32(fl32(code[q] · nested) + offset).
__device__ __forceinline__ float blockScale(const Absmax4bit& a, int64_t block) {
  if (a.absmax) return a.absmax[block];
  return __fadd_rn(__fmul_rn(a.code[a.qabsmax[block]], a.nestedAbsmax[block / a.nestedBlocksize]), a.offset);
}

/** kTrans false: y[M, N] = x[M, K] · Wᵀ with W [N, K]. kTrans true: y[M, Wk] = x[M, Wn] · W.
 * GEMM view: C[M, Nout] = A[M, Kred] · B[Kred, Nout], B(k, n) = W[n][k] (forward) or W[k][n]. */
template <bool kTrans>
__global__ void __launch_bounds__(256) gemm4bitF32Kernel(const float* __restrict__ x, const uint8_t* __restrict__ codes,
                                                          Absmax4bit a, int Wn, int Wk, int log2Bs, bool fp4, int M,
                                                          float* __restrict__ y) {
  __shared__ float lut[16];
  __shared__ float sA[SK][simt::LD];  // [k][m]
  __shared__ float sB[SK][simt::LD];  // [k][n]
  if (threadIdx.x < 16) lut[threadIdx.x] = __uint_as_float(fp4 ? kFp4Bits[threadIdx.x] : kNf4Bits[threadIdx.x]);
  const int Nout = kTrans ? Wk : Wn, Kred = kTrans ? Wn : Wk;
  const int m0 = blockIdx.y * SB, n0 = blockIdx.x * SB;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  __syncthreads();  // lut
  for (int k0 = 0; k0 < Kred; k0 += SK) {
    for (int e = threadIdx.x; e < SB * SK; e += 256) {
      {  // A (m, k): row-major, threads along k
        const int r = e / SK, k = e % SK, gm = m0 + r, gk = k0 + k;
        sA[k][r] = (gm < M && gk < Kred) ? x[int64_t(gm) * Kred + gk] : 0.f;
      }
      // B (k, n): threads along W's contiguous axis (k forward, n transposed).
      const int c = kTrans ? e % SB : e / SK, k = kTrans ? e / SB : e % SK;
      const int gn = n0 + c, gk = k0 + k;
      float v = 0.f;
      if (gn < Nout && gk < Kred) {
        const int64_t idx = kTrans ? int64_t(gk) * Wk + gn : int64_t(gn) * Wk + gk;
        const uint8_t byte = codes[idx >> 1];
        v = __fmul_rn(lut[(idx & 1) ? (byte & 15) : (byte >> 4)], blockScale(a, idx >> log2Bs));
      }
      sB[k][c] = v;
    }
    __syncthreads();
    simt::fmaTile(sA, sB, tx, ty, acc);
    __syncthreads();
  }
  simt::storeTile(acc, y, m0, n0, tx, ty, M, Nout);
}

int log2i(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

}  // namespace

void gemm4bitF32Simt(cudaStream_t s, const float* x, int m, const Weight4bit& w, float* y, bool inputGrad) {
  require(w.codes != nullptr, "gemm4bitF32Simt: no codes");
  require(w.n > 0 && w.k > 0 && int64_t(w.n) * w.k <= INT32_MAX, "gemm4bitF32Simt: n·k must be in [1, 2^31-1]");
  require(w.blocksize >= 16 && w.blocksize <= 4096 && (w.blocksize & (w.blocksize - 1)) == 0,
          "gemm4bitF32Simt: blocksize must be a power of two in [16, 4096]");
  require(w.absmax.absmax || (w.absmax.qabsmax && w.absmax.code && w.absmax.nestedAbsmax && w.absmax.nestedBlocksize > 0),
          "gemm4bitF32Simt: need absmax, or qabsmax + code + nestedAbsmax");
  require(m >= 1, "gemm4bitF32Simt: m must be ≥ 1");
  const int nOut = inputGrad ? w.k : w.n;
  const dim3 grid((nOut + SB - 1) / SB, (m + SB - 1) / SB);
  require(grid.y <= 65535, "gemm4bitF32Simt: m too large for the grid");
  const int lg = log2i(w.blocksize);
  if (inputGrad) gemm4bitF32Kernel<true><<<grid, 256, 0, s>>>(x, w.codes, w.absmax, w.n, w.k, lg, w.fp4, m, y);
  else gemm4bitF32Kernel<false><<<grid, 256, 0, s>>>(x, w.codes, w.absmax, w.n, w.k, lg, w.fp4, m, y);
  QK_LAUNCH_CHECK("gemm4bitF32Kernel");
}

}  // namespace qk
