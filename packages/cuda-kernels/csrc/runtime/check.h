// Error plumbing shared by the runtime, the kernels' host launchers, the N-API layer and the
// standalone GPU harness: every CUDA call and every launch is checked, and a failure becomes a
// C++ exception that carries the call site. The N-API layer (napi/guard.h) turns it into a JS
// exception; the harness prints it. Nothing ever continues after a failed call.
#pragma once
#include <cuda_runtime_api.h>
#include <stdexcept>
#include <string>

namespace qk {

struct CudaError : std::runtime_error {
  int code;
  CudaError(int c, const std::string& what) : std::runtime_error(what), code(c) {}
};

/** A bad argument found by a launcher (shape, alignment, limit): never reaches a kernel. */
struct ArgError : std::invalid_argument {
  explicit ArgError(const std::string& what) : std::invalid_argument(what) {}
};

inline void check(cudaError_t e, const char* expr, const char* file, int line) {
  if (e == cudaSuccess) return;
  throw CudaError(static_cast<int>(e), std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e) + " (" +
                                           expr + " at " + file + ":" + std::to_string(line) + ")");
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw ArgError(message);
}

}  // namespace qk

#define QK_CHECK(expr) ::qk::check((expr), #expr, __FILE__, __LINE__)
// After every <<<>>>: catches bad launch configurations immediately (asynchronous faults surface
// at the next synchronising call, which is checked too).
#define QK_LAUNCH_CHECK(name) ::qk::check(cudaGetLastError(), name, __FILE__, __LINE__)
