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
// Two shared stages with register prefetch: while the warps multiply stage s, each thread already
// holds the global data of the next k-tile in registers (loader `fetch`), and writes it into stage
// s^1 (loader `commit`) after its MMAs; one __syncthreads per k-tile. A loader has init() (once,
// before a barrier), fetch(Regs&, batch, rowBase, kBase) and commit(tile, const Regs&).
template <class ALoader, class BLoader, bool kOutBf16>
__global__ void __launch_bounds__(THREADS) gemmKernel(ALoader la, BLoader lb, void* __restrict__ c, int M, int N, int K) {
  using namespace nvcuda;
  __shared__ __align__(128) __nv_bfloat16 smem[2][2][BM * LD];  // [stage][A, B]: 40 KB
  const int batch = blockIdx.z;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3;  // warp tile origin: (wm·64, wn·32)

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  typename ALoader::Regs ra;
  typename BLoader::Regs rb;
  la.init();
  lb.init();
  __syncthreads();
  la.fetch(ra, batch, m0, 0);
  lb.fetch(rb, batch, n0, 0);
  la.commit(smem[0][0], ra);
  lb.commit(smem[0][1], rb);
  __syncthreads();
  int stage = 0;
  for (int k0 = 0; k0 < K; k0 += BK) {
    const bool more = k0 + BK < K;
    if (more) {  // global loads in flight during the MMAs below
      la.fetch(ra, batch, m0, k0 + BK);
      lb.fetch(rb, batch, n0, k0 + BK);
    }
    const __nv_bfloat16* sA = smem[stage][0];
    const __nv_bfloat16* sB = smem[stage][1];
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
    if (more) {  // stage^1 was last read in the previous iteration, which ended with a barrier
      la.commit(smem[stage ^ 1][0], ra);
      lb.commit(smem[stage ^ 1][1], rb);
    }
    __syncthreads();
    stage ^= 1;
  }

  // Epilogue through a per-warp 16×16 staging tile (aliasing the now idle stages): bounds-checked,
  // converts to the output dtype.
  float* sC = reinterpret_cast<float*>(&smem[0][0][0]) + warp * 256;
  const int64_t cBase = static_cast<int64_t>(batch) * M * N;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(sC, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int r0 = m0 + wm * 64 + i * 16, c0 = n0 + wn * 32 + j * 16;
      for (int e = lane; e < 256; e += 32) {
        const int r = r0 + e / 16, col = c0 + e % 16;
        if (r < M && col < N) storeOut<kOutBf16>(c, cBase + static_cast<int64_t>(r) * N + col, sC[e]);
      }
      __syncwarp();
    }
}

constexpr int kPerThread = BM * BK / THREADS;  // 16 tile elements per thread

/** Generic A or B loader for a dense matrix: tile rows index `rows` (M or N), cols index K.
 * `kMajor`: element (r, k) at r·K + k (rows contiguous in k), else at k·rows + r. Any dtype. */
struct DenseLoader {
  const void* p;
  int dtype;
  bool kMajor;
  int rows, K;
  int64_t batchStride;
  struct Regs { float v[kPerThread]; };
  // Coalesced: consecutive threads walk the contiguous dimension of the source.
  __device__ __forceinline__ int rowOf(int e) const { return kMajor ? e / BK : e % BM; }
  __device__ __forceinline__ int colOf(int e) const { return kMajor ? e % BK : e / BM; }
  __device__ __forceinline__ void init() const {}
  __device__ __forceinline__ void fetch(Regs& regs, int batch, int r0, int k0) const {
    const char* base = static_cast<const char*>(p) + batch * batchStride * static_cast<int64_t>(dtypeSize(dtype));
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int e = threadIdx.x + i * THREADS;
      const int gr = r0 + rowOf(e), gk = k0 + colOf(e);
      regs.v[i] = (gr < rows && gk < K)
                      ? loadAs(base, dtype, kMajor ? static_cast<int64_t>(gr) * K + gk : static_cast<int64_t>(gk) * rows + gr)
                      : 0.f;
    }
  }
  __device__ __forceinline__ void commit(__nv_bfloat16* tile, const Regs& regs) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int e = threadIdx.x + i * THREADS;
      tile[rowOf(e) * LD + colOf(e)] = __float2bfloat16_rn(regs.v[i]);
    }
  }
};

/** Fast loader: bf16, k-major, K % 8 == 0, 16-byte aligned base: one uint4 (8 elements) per load. */
struct Bf16VecLoader {
  const uint16_t* p;
  int rows, K;
  int64_t batchStride;
  static constexpr int kVecs = BM * BK / 8 / THREADS;  // 2
  struct Regs { uint4 v[kVecs]; };
  __device__ __forceinline__ void init() const {}
  __device__ __forceinline__ void fetch(Regs& regs, int batch, int r0, int k0) const {
    const uint16_t* base = p + batch * batchStride;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int v = threadIdx.x + i * THREADS;
      const int gr = r0 + v / (BK / 8), gk = k0 + (v % (BK / 8)) * 8;
      regs.v[i] = (gr < rows && gk < K) ? *reinterpret_cast<const uint4*>(base + static_cast<int64_t>(gr) * K + gk)
                                        : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ __forceinline__ void commit(__nv_bfloat16* tile, const Regs& regs) const {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int v = threadIdx.x + i * THREADS;
      // row·80 + col·2 bytes with col % 8 == 0: 16-byte aligned
      *reinterpret_cast<uint4*>(tile + (v / (BK / 8)) * LD + (v % (BK / 8)) * 8) = regs.v[i];
    }
  }
};

}  // namespace tc
}  // namespace qk
