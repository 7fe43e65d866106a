#include "nccl_dyn.h"

#include <dlfcn.h>

#include <mutex>

#include "check.h"

namespace qk {
namespace {

struct Loaded {
  NcclStatus status;
  nccl::Api api;
};

Loaded& loaded() {
  static Loaded l;
  return l;
}
std::mutex& loadMutex() {
  static std::mutex m;
  return m;
}

template <class F>
bool bind(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += (missing.empty() ? "" : ", ") + std::string(name);
  return fn != nullptr;
}

}  // namespace

const NcclStatus& ncclLoad(const std::vector<std::string>& names) {
  std::lock_guard<std::mutex> lock(loadMutex());
  Loaded& l = loaded();
  if (l.status.loaded) {
    for (const std::string& name : names)
      if (name == l.status.library) return l.status;
    // one NCCL per process: asking for another library is answered "not loaded", with the reason
    static NcclStatus other;
    other = NcclStatus{};
    other.detail = "another NCCL library (" + l.status.library + ") is already loaded in this process";
    return other;
  }
  l.status.detail.clear();
  for (const std::string& name : names) {
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* err = dlerror();
      l.status.detail += (l.status.detail.empty() ? "" : "; ") + std::string(err ? err : name);
      continue;
    }
    nccl::Api a;
    std::string missing;
    bind(lib, "ncclGetVersion", a.getVersion, missing);
    bind(lib, "ncclGetUniqueId", a.getUniqueId, missing);
    bind(lib, "ncclCommInitRank", a.commInitRank, missing);
    bind(lib, "ncclCommDestroy", a.commDestroy, missing);
    bind(lib, "ncclCommAbort", a.commAbort, missing);
    bind(lib, "ncclCommGetAsyncError", a.commGetAsyncError, missing);
    bind(lib, "ncclGetErrorString", a.getErrorString, missing);
    bind(lib, "ncclAllReduce", a.allReduce, missing);
    bind(lib, "ncclAllGather", a.allGather, missing);
    bind(lib, "ncclReduceScatter", a.reduceScatter, missing);
    bind(lib, "ncclBroadcast", a.broadcast, missing);
    if (!missing.empty()) {
      l.status.detail += (l.status.detail.empty() ? "" : "; ") + name + ": missing symbol(s) " + missing;
      dlclose(lib);
      continue;
    }
    l.api = a;
    l.status.library = name;
    l.status.loaded = true;
    a.getVersion(&l.status.version);
    break;
  }
  return l.status;
}

const nccl::Api& ncclApi() {
  const Loaded& l = loaded();
  if (!l.status.loaded) throw CudaError(-1, "NCCL is not loaded (" + l.status.detail + ")");
  return l.api;
}

void ncclCheck(int rc, const char* what) {
  if (rc == 0) return;
  const char* text = loaded().status.loaded ? loaded().api.getErrorString(rc) : nullptr;
  throw CudaError(rc, std::string(what) + " failed: NCCL error " + std::to_string(rc) + (text ? std::string(" (") + text + ")" : ""));
}

}  // namespace qk
