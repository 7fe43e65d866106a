// Dense GEMM for the Backend's matmul: cuBLAS (dlopen) when present, else our kernels: a SIMT
// f32 GEMM (keeps f32 accuracy for f32 inputs, like the reference) and the tensor-core bf16 GEMM —
// the pipelined mma.sync kernel (gemm_pipe.cuh) when the operands are 16-byte aligned, else (or with
// QLORA_CUDA_GEMM=legacy) the synchronous WMMA kernel (gemm_tc.cuh).
// Reference: reference backend matmul (f32 accumulate); dev/check_gemm_pipeline.cu, dev/gpu_check.cu.
#include <cstdlib>
#include <cstring>

#include "../runtime/cublas_dyn.h"
#include "common.cuh"
#include "gemm_pipe.cuh"
#include "gemm_tc.cuh"
#include "kernels.h"
#include "simt_tile.cuh"

namespace qk {
namespace {

// 64×64 tile, BK 16, 256 threads, 4×4 outputs per thread (simt_tile.cuh). Row-major C [M, N].
using simt::SB;
using simt::SK;

__global__ void __launch_bounds__(256) sgemmKernel(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                                                   int M, int N, int K, bool transA, bool transB, int64_t aStride,
                                                   int64_t bStride) {
  __shared__ float sA[SK][simt::LD];  // [k][m]
  __shared__ float sB[SK][simt::LD];  // [k][n]
  const int batch = blockIdx.z;
  const float* a = A + batch * aStride;
  const float* b = B + batch * bStride;
  const int m0 = blockIdx.y * SB, n0 = blockIdx.x * SB;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += SK) {
    for (int e = threadIdx.x; e < SB * SK; e += 256) {
      // A element (m, k): [m,k] → m·K + k; transA [k,m] → k·M + m. Map threads along the contiguous axis.
      int r = transA ? e % SB : e / SK, k = transA ? e / SB : e % SK;
      int gm = m0 + r, gk = k0 + k;
      sA[k][r] = (gm < M && gk < K) ? (transA ? a[int64_t(gk) * M + gm] : a[int64_t(gm) * K + gk]) : 0.f;
      // B element (k, n): [k,n] → k·N + n; transB [n,k] → n·K + k.
      int c = transB ? e / SK : e % SB;
      k = transB ? e % SK : e / SB;
      int gn = n0 + c;
      gk = k0 + k;
      sB[k][c] = (gn < N && gk < K) ? (transB ? b[int64_t(gn) * K + gk] : b[int64_t(gk) * N + gn]) : 0.f;
    }
    __syncthreads();
    simt::fmaTile(sA, sB, tx, ty, acc);
    __syncthreads();
  }
  simt::storeTile(acc, C + static_cast<int64_t>(batch) * M * N, m0, n0, tx, ty, M, N);
}

void checkGemm(const GemmArgs& g) {
  require(g.batch >= 1 && g.batch <= 65535, "gemm: batch must be in [1, 65535]");
  require(g.m >= 0 && g.n >= 0 && g.k >= 0, "gemm: negative dimension");
  require(g.dtype == F32 || g.dtype == BF16, "gemm: inputs must be f32 or bf16");
  require(g.aBatchStride >= -1 && g.bBatchStride >= -1, "gemm: bad batch stride");
}

int64_t strideOr(int64_t s, int64_t dflt) { return s < 0 ? dflt : s; }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

/** The pipelined kernel's cp.async needs whole, aligned 16-byte chunks along each operand's contiguous axis. */
bool pipelineFits(const GemmArgs& g, const void* A, const void* B, int64_t as, int64_t bs) {
  const bool aK = !g.transA, bK = g.transB;
  return aligned16(A) && aligned16(B) && as % 8 == 0 && bs % 8 == 0 && (aK ? g.k : g.m) % 8 == 0 &&
         (bK ? g.k : g.n) % 8 == 0;
}

template <bool kAK, bool kBK>
void launchDensePipe(cudaStream_t s, const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C, int64_t as,
                     int64_t bs) {
  const pipe::DenseOp<kAK> a{A, g.m, g.k, kAK ? g.k : g.m, as};
  const pipe::DenseOp<kBK> b{B, g.n, g.k, kBK ? g.k : g.n, bs};
  pipe::launch<pipe::DenseOp<kAK>, pipe::DenseOp<kBK>, false>(s, a, b, C, g.m, g.n, g.k, g.batch);
}

}  // namespace

bool legacyGemmFromEnv() {
  static const bool legacy = [] {
    const char* v = std::getenv("QLORA_CUDA_GEMM");
    return v != nullptr && std::strcmp(v, "legacy") == 0;
  }();
  return legacy;
}

bool gemmTensorCoreBf16(cudaStream_t s, const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C, int variant) {
  checkGemm(g);
  const int64_t as = strideOr(g.aBatchStride, int64_t(g.m) * g.k), bs = strideOr(g.bBatchStride, int64_t(g.k) * g.n);
  if (g.m == 0 || g.n == 0) return false;
  const bool wantPipe = variant == 1 || (variant == -1 && !legacyGemmFromEnv());
  if (wantPipe && pipelineFits(g, A, B, as, bs)) {
    if (!g.transA && g.transB) launchDensePipe<true, true>(s, g, A, B, C, as, bs);
    else if (!g.transA) launchDensePipe<true, false>(s, g, A, B, C, as, bs);
    else if (g.transB) launchDensePipe<false, true>(s, g, A, B, C, as, bs);
    else launchDensePipe<false, false>(s, g, A, B, C, as, bs);
    return true;
  }
  dim3 grid((g.n + tc::BN - 1) / tc::BN, (g.m + tc::BM - 1) / tc::BM, g.batch);
  require(grid.y <= 65535, "gemm: m too large for the grid");
  // Bf16VecLoader reads uint4 from base + row·K + k: it needs a 16-byte aligned base too. A misaligned
  // base is exactly what sends a K % 8 == 0 operand here instead of to the pipelined kernel.
  const bool aVec = !g.transA && g.k % 8 == 0 && as % 8 == 0 && aligned16(A);
  const bool bVec = g.transB && g.k % 8 == 0 && bs % 8 == 0 && aligned16(B);
  tc::DenseLoader la{A, BF16, !g.transA, g.m, g.k, as};
  tc::DenseLoader lb{B, BF16, g.transB, g.n, g.k, bs};
  tc::Bf16VecLoader va{A, g.m, g.k, as}, vb{B, g.n, g.k, bs};
  if (aVec && bVec) tc::gemmKernel<tc::Bf16VecLoader, tc::Bf16VecLoader, false><<<grid, tc::THREADS, 0, s>>>(va, vb, C, g.m, g.n, g.k);
  else if (aVec) tc::gemmKernel<tc::Bf16VecLoader, tc::DenseLoader, false><<<grid, tc::THREADS, 0, s>>>(va, lb, C, g.m, g.n, g.k);
  else tc::gemmKernel<tc::DenseLoader, tc::DenseLoader, false><<<grid, tc::THREADS, 0, s>>>(la, lb, C, g.m, g.n, g.k);
  QK_LAUNCH_CHECK("tc::gemmKernel");
  return false;
}

void gemm(cudaStream_t s, const GemmArgs& g, const void* A, const void* B, float* C, int useCublas) {
  checkGemm(g);
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0) {
    QK_CHECK(cudaMemsetAsync(C, 0, sizeof(float) * size_t(g.batch) * g.m * g.n, s));
    return;
  }
  const int64_t as = strideOr(g.aBatchStride, int64_t(g.m) * g.k), bs = strideOr(g.bBatchStride, int64_t(g.k) * g.n);
  const bool cublas = useCublas == 1 || (useCublas == -1 && cublasUsable());
  if (cublas) {
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap operands, keep flags.
    const int type = g.dtype == F32 ? cublas::R_32F : cublas::R_16BF;
    cublasGemmStridedBatched(s, g.transB ? cublas::OP_T : cublas::OP_N, g.transA ? cublas::OP_T : cublas::OP_N, g.n,
                             g.m, g.k, B, type, g.transB ? g.k : g.n, bs, A, type, g.transA ? g.m : g.k, as, C,
                             cublas::R_32F, g.n, int64_t(g.m) * g.n, g.batch, cublas::COMPUTE_32F);
    return;
  }
  if (g.dtype == BF16) {
    gemmTensorCoreBf16(s, g, static_cast<const uint16_t*>(A), static_cast<const uint16_t*>(B), C);
    return;
  }
  dim3 grid((g.n + SB - 1) / SB, (g.m + SB - 1) / SB, g.batch);
  require(grid.y <= 65535, "gemm: m too large for the grid");
  sgemmKernel<<<grid, 256, 0, s>>>(static_cast<const float*>(A), static_cast<const float*>(B), C, g.m, g.n, g.k,
                                   g.transA, g.transB, as, bs);
  QK_LAUNCH_CHECK("sgemmKernel");
}

}  // namespace qk
