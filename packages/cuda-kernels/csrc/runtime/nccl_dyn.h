// NCCL through dlopen with self-declared prototypes and enum values (toolchain notes §4), like cuBLAS: the addon
// builds without NCCL headers or libraries, and a missing libnccl.so.2 is an error naming the library at run
// time, never a load failure of the addon. Not verified on a GPU (no NCCL library or GPU where it was written).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <vector>

namespace qk {

struct NcclStatus {
  bool loaded = false;
  std::string library;  // the name that loaded
  std::string detail;   // dlerror() text of every failed attempt, or the missing symbol
  int version = 0;      // ncclGetVersion: e.g. 22703 for 2.27.3
};

namespace nccl {
struct Comm;  // ncclComm (opaque)
using CommT = Comm*;
struct UniqueId {
  char internal[128];
};
// ncclDataType_t / ncclRedOp_t values of nccl.h (2.x)
constexpr int INT32 = 2, FLOAT32 = 7, FLOAT64 = 8;
constexpr int SUM = 0, PROD = 1, MAX = 2, MIN = 3;
constexpr int IN_PROGRESS = 7;  // ncclInProgress

struct Api {
  int (*getVersion)(int*) = nullptr;
  int (*getUniqueId)(UniqueId*) = nullptr;
  int (*commInitRank)(CommT*, int, UniqueId, int) = nullptr;
  int (*commDestroy)(CommT) = nullptr;
  int (*commAbort)(CommT) = nullptr;
  int (*commGetAsyncError)(CommT, int*) = nullptr;
  const char* (*getErrorString)(int) = nullptr;
  int (*allReduce)(const void*, void*, size_t, int, int, CommT, cudaStream_t) = nullptr;
  int (*allGather)(const void*, void*, size_t, int, CommT, cudaStream_t) = nullptr;
  int (*reduceScatter)(const void*, void*, size_t, int, int, CommT, cudaStream_t) = nullptr;
  int (*broadcast)(const void*, void*, size_t, int, int, CommT, cudaStream_t) = nullptr;
};
}  // namespace nccl

/** Tries each name in order (dlopen RTLD_NOW | RTLD_LOCAL) until one loads with every symbol. Once one is loaded,
 * later calls return its status when `names` include it, else "not loaded" saying which one is. Never throws. */
const NcclStatus& ncclLoad(const std::vector<std::string>& names);
/** The loaded API; throws CudaError (code -1) naming the library when ncclLoad has not succeeded. */
const nccl::Api& ncclApi();
/** Throws CudaError(code = NCCL result) with ncclGetErrorString and the call site when rc != 0. */
void ncclCheck(int rc, const char* what);

}  // namespace qk
