// cuBLAS through dlopen with self-declared prototypes and enum values (toolchain notes §4): the
// addon builds without cuBLAS headers or libraries and falls back to our own GEMM when
// libcublas.so.13/.12 is absent. Not verified on a GPU: sharing our static cudart's primary
// context and streams with the dlopened cuBLAS (the GPU check exercises exactly that).
#pragma once
#include <cuda_runtime_api.h>
#include <string>

namespace qk {

struct CublasStatus {
  bool loaded = false;
  std::string library;  // the soname that loaded
  std::string detail;   // dlerror() text of every failed attempt, or the failing symbol
  int version = 0;
};

namespace cublas {
constexpr int OP_N = 0, OP_T = 1;
constexpr int R_32F = 0, R_16F = 2, R_16BF = 14;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69;
constexpr int GEMM_DEFAULT = -1;
}  // namespace cublas

/** Loads libcublas once (thread-safe); never throws. */
const CublasStatus& cublasStatus();
/** Set QLORA_CUDA_NO_CUBLAS=1 to force our own GEMM (used by the harness to compare both). */
bool cublasUsable();

/** Column-major cublasGemmStridedBatchedEx on the compute stream (C = A·B + beta·C, alpha 1); throws
 * CudaError on failure. */
void cublasGemmStridedBatched(cudaStream_t stream, int transa, int transb, int m, int n, int k, const void* A,
                              int Atype, int lda, long long strideA, const void* B, int Btype, int ldb,
                              long long strideB, void* C, int Ctype, int ldc, long long strideC, int batch,
                              int computeType, float beta = 0.0f);

}  // namespace qk
