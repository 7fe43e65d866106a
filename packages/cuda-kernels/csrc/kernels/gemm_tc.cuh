// One tensor-core GEMM skeleton (WMMA bf16 × bf16 → f32 accumulate) shared by the dense bf16 GEMM
// (gemm.cu) and the fused NF4 GEMM (gemm_nf4.cu). Only the tile loaders differ: a loader fills a
// shared-memory bf16 tile, zero-filling out-of-range elements, so the core never reads out of
// bounds. Block tile 128×128×32, 8 warps in a 2×4 grid, each warp 64×32 (4×2 fragments).
// Shared tiles are padded to 40 columns: WMMA needs ldm % 8 == 0 and 32-byte aligned fragment
// pointers (16·40·2 = 1280 B per fragment row, 16·2 = 32 B per fragment column: both hold).
#pragma once
#include <mma.h>

#include "common.cuh"

namespace qk {
namespace tc {

constexpr int BM = 128, BN = 128, BK = 32, LD = BK + 8, THREADS = 256;

/** C tile store: f32 or bf16, row-major [M, N] with leading dimension N, batch stride M·N. */
template <bool kOutBf16>
__device__ __forceinline__ void storeOut(void* c, int64_t idx, float v) {
  if (kOutBf16) static_cast<uint16_t*>(c)[idx] = floatToBf16(v);
  else static_cast<float*>(c)[idx] = v;
}

// A: [M, K] tile rows = m, cols = k. B: [N, K] tile rows = n, cols = k ("col-major" B for WMMA).
template <class ALoader, class BLoader, bool kOutBf16>
__global__ void __launch_bounds__(THREADS) gemmKernel(ALoader la, BLoader lb, void* __restrict__ c, int M, int N, int K) {
  using namespace nvcuda;
  __shared__ __align__(128) __nv_bfloat16 sA[BM * LD];
  __shared__ __align__(128) __nv_bfloat16 sB[BN * LD];
  __shared__ __align__(128) float sC[8][16 * 16];
  const int batch = blockIdx.z;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile origin: (wm·64, wn·32)

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int k0 = 0; k0 < K; k0 += BK) {
    la.load(sA, batch, m0, k0);
    lb.load(sB, batch, n0, k0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) wmma::load_matrix_sync(fa[i], sA + (wm * 64 + i * 16) * LD + kk, LD);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], sB + (wn * 32 + j * 16) * LD + kk, LD);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }

  // Epilogue through a per-warp 16×16 staging tile: bounds-checked, converts to the output dtype.
  const int64_t cBase = static_cast<int64_t>(batch) * M * N;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(sC[warp], acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int r0 = m0 + wm * 64 + i * 16, c0 = n0 + wn * 32 + j * 16;
      for (int e = lane; e < 256; e += 32) {
        const int r = r0 + e / 16, col = c0 + e % 16;
        if (r < M && col < N) storeOut<kOutBf16>(c, cBase + static_cast<int64_t>(r) * N + col, sC[warp][e]);
      }
      __syncwarp();
    }
}

/** Generic A or B loader for a dense matrix: tile rows index `rows` (M or N), cols index K.
 * `kMajor`: element (r, k) at r·K + k (rows contiguous in k), else at k·rows + r. Any dtype. */
struct DenseLoader {
  const void* p;
  int dtype;
  bool kMajor;
  int rows, K;
  int64_t batchStride;
  __device__ __forceinline__ void load(__nv_bfloat16* tile, int batch, int r0, int k0) const {
    const char* base = static_cast<const char*>(p) + batch * batchStride * static_cast<int64_t>(dtypeSize(dtype));
    for (int e = threadIdx.x; e < BM * BK; e += THREADS) {
      // Coalesced: consecutive threads walk the contiguous dimension of the source.
      const int r = kMajor ? e / BK : e % BM, k = kMajor ? e % BK : e / BM;
      const int gr = r0 + r, gk = k0 + k;
      float v = 0.f;
      if (gr < rows && gk < K)
        v = loadAs(base, dtype, kMajor ? static_cast<int64_t>(gr) * K + gk : static_cast<int64_t>(gk) * rows + gr);
      tile[r * LD + k] = __float2bfloat16_rn(v);
    }
  }
};

/** Fast loader: bf16, k-major, K % 8 == 0, 16-byte aligned base: one uint4 (8 elements) per load. */
struct Bf16VecLoader {
  const uint16_t* p;
  int rows, K;
  int64_t batchStride;
  __device__ __forceinline__ void load(__nv_bfloat16* tile, int batch, int r0, int k0) const {
    const uint16_t* base = p + batch * batchStride;
    for (int v = threadIdx.x; v < BM * BK / 8; v += THREADS) {
      const int r = v / (BK / 8), k = (v % (BK / 8)) * 8;
      const int gr = r0 + r, gk = k0 + k;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (gr < rows && gk < K) val = *reinterpret_cast<const uint4*>(base + static_cast<int64_t>(gr) * K + gk);
      *reinterpret_cast<uint4*>(tile + r * LD + k) = val;  // r·80 + k·2 bytes: 16-byte aligned
    }
  }
};

}  // namespace tc
}  // namespace qk
