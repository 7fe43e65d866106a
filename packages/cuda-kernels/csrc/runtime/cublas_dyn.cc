#include "cublas_dyn.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "check.h"

namespace qk {
namespace {

struct cublasContext;
using Handle = cublasContext*;
using CreateFn = int (*)(Handle*);
using SetStreamFn = int (*)(Handle, cudaStream_t);
using GetVersionFn = int (*)(Handle, int*);
using SetWorkspaceFn = int (*)(Handle, void*, size_t);
using GemmStridedBatchedExFn = int (*)(Handle, int, int, int, int, int, const void*, const void*, int, int, long long,
                                       const void*, int, int, long long, const void*, void*, int, int, long long, int,
                                       int, int);

struct Api {
  CublasStatus status;
  Handle handle = nullptr;
  SetStreamFn setStream = nullptr;
  GemmStridedBatchedExFn gemmStridedBatchedEx = nullptr;
};

Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    void* lib = nullptr;
    for (const char* name : names) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        a.status.library = name;
        break;
      }
      const char* err = dlerror();
      a.status.detail += (a.status.detail.empty() ? "" : "; ") + std::string(err ? err : name);
    }
    if (!lib) return;
    auto create = reinterpret_cast<CreateFn>(dlsym(lib, "cublasCreate_v2"));
    auto getVersion = reinterpret_cast<GetVersionFn>(dlsym(lib, "cublasGetVersion_v2"));
    a.setStream = reinterpret_cast<SetStreamFn>(dlsym(lib, "cublasSetStream_v2"));
    a.gemmStridedBatchedEx = reinterpret_cast<GemmStridedBatchedExFn>(dlsym(lib, "cublasGemmStridedBatchedEx"));
    if (!create || !a.setStream || !a.gemmStridedBatchedEx) {
      a.status.detail = a.status.library + ": missing symbol (cublasCreate_v2/cublasSetStream_v2/cublasGemmStridedBatchedEx)";
      return;
    }
    int rc = create(&a.handle);
    if (rc != 0) {
      a.status.detail = a.status.library + ": cublasCreate_v2 returned status " + std::to_string(rc);
      a.handle = nullptr;
      return;
    }
    if (getVersion) getVersion(a.handle, &a.status.version);
    a.status.loaded = true;
    a.status.detail.clear();
  });
  return a;
}

}  // namespace

const CublasStatus& cublasStatus() { return api().status; }

bool cublasUsable() {
  const char* off = std::getenv("QLORA_CUDA_NO_CUBLAS");
  if (off && off[0] == '1') return false;
  return api().status.loaded;
}

void cublasGemmStridedBatched(cudaStream_t stream, int transa, int transb, int m, int n, int k, const void* A,
                              int Atype, int lda, long long strideA, const void* B, int Btype, int ldb,
                              long long strideB, void* C, int Ctype, int ldc, long long strideC, int batch,
                              int computeType, float beta) {
  Api& a = api();
  require(a.status.loaded, "cuBLAS is not loaded: " + a.status.detail);
  const float alpha = 1.0f;
  int rc = a.setStream(a.handle, stream);
  if (rc == 0)
    rc = a.gemmStridedBatchedEx(a.handle, transa, transb, m, n, k, &alpha, A, Atype, lda, strideA, B, Btype, ldb,
                                strideB, &beta, C, Ctype, ldc, strideC, batch, computeType, cublas::GEMM_DEFAULT);
  if (rc != 0) throw CudaError(rc, "cuBLAS status " + std::to_string(rc) + " in cublasGemmStridedBatchedEx");
}

}  // namespace qk
