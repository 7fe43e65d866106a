// MPI binding loaded at run time: dlopen(libmpi.so.40) and dlsym of the few entry points and predefined objects
// used, with self-declared prototypes, so this addon builds without MPI headers and loads without MPI installed.
// Open MPI's handles (MPI_Comm, MPI_Datatype, MPI_Op, MPI_Request, MPI_Errhandler) are pointers, and its
// predefined objects are exported globals (ompi_mpi_comm_world, ompi_mpi_float, ...): the handle is their address.
// Every collective is nonblocking (MPI-3 I* calls); JavaScript polls the requests with test(), so a dead peer
// becomes a timeout in JavaScript instead of a hang inside a blocking call.
#include <dlfcn.h>
#include <napi.h>

#include <string>
#include <vector>

namespace {

using Handle = void*;
constexpr int kSuccess = 0;                     // MPI_SUCCESS
void* const kInPlace = reinterpret_cast<void*>(1);  // Open MPI's MPI_IN_PLACE

struct Mpi {
  void* lib = nullptr;
  int (*Init)(int*, char***) = nullptr;
  int (*Initialized)(int*) = nullptr;
  int (*Finalized)(int*) = nullptr;
  int (*Finalize)() = nullptr;
  int (*Abort)(Handle, int) = nullptr;
  int (*CommRank)(Handle, int*) = nullptr;
  int (*CommSize)(Handle, int*) = nullptr;
  int (*CommSetErrhandler)(Handle, Handle) = nullptr;
  int (*ErrorString)(int, char*, int*) = nullptr;
  int (*GetLibraryVersion)(char*, int*) = nullptr;
  int (*Iallreduce)(const void*, void*, int, Handle, Handle, Handle, Handle*) = nullptr;
  int (*Iallgather)(const void*, int, Handle, void*, int, Handle, Handle, Handle*) = nullptr;
  int (*IreduceScatterBlock)(const void*, void*, int, Handle, Handle, Handle, Handle*) = nullptr;
  int (*Ibcast)(void*, int, Handle, int, Handle, Handle*) = nullptr;
  int (*Ibarrier)(Handle, Handle*) = nullptr;
  int (*Test)(Handle*, int*, void*) = nullptr;
  Handle commWorld = nullptr, errorsReturn = nullptr;
  Handle dtypes[3] = {nullptr, nullptr, nullptr};  // float32, float64, int32
  Handle ops[3] = {nullptr, nullptr, nullptr};     // sum, max, min
};

Mpi mpi;
std::vector<Handle> requests;  // slot table: JavaScript holds the slot index
std::vector<int> freeSlots;

template <typename F>
bool Sym(const char* name, F& out, std::string& missing) {
  void* p = dlsym(mpi.lib, name);
  if (!p) missing += std::string(missing.empty() ? "" : ", ") + name;
  out = reinterpret_cast<F>(p);
  return p != nullptr;
}

Napi::Value Throw(Napi::Env env, const std::string& msg) {
  Napi::Error::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

std::string ErrorText(int code) {
  if (!mpi.ErrorString) return "MPI error " + std::to_string(code);
  char buf[512];
  int len = 0;
  mpi.ErrorString(code, buf, &len);
  return "MPI error " + std::to_string(code) + ": " + std::string(buf, len > 0 ? len : 0);
}

// load(path) -> undefined; throws with dlerror() or the list of missing symbols.
Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (mpi.lib) return env.Undefined();
  std::string path = info[0].As<Napi::String>();
  // RTLD_GLOBAL: Open MPI's own plugins (mca_*.so) resolve libmpi's symbols from the global scope.
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!lib) return Throw(env, std::string("dlopen: ") + dlerror());
  mpi.lib = lib;
  std::string missing;
  Sym("MPI_Init", mpi.Init, missing);
  Sym("MPI_Initialized", mpi.Initialized, missing);
  Sym("MPI_Finalized", mpi.Finalized, missing);
  Sym("MPI_Finalize", mpi.Finalize, missing);
  Sym("MPI_Abort", mpi.Abort, missing);
  Sym("MPI_Comm_rank", mpi.CommRank, missing);
  Sym("MPI_Comm_size", mpi.CommSize, missing);
  Sym("MPI_Comm_set_errhandler", mpi.CommSetErrhandler, missing);
  Sym("MPI_Error_string", mpi.ErrorString, missing);
  Sym("MPI_Get_library_version", mpi.GetLibraryVersion, missing);
  Sym("MPI_Iallreduce", mpi.Iallreduce, missing);
  Sym("MPI_Iallgather", mpi.Iallgather, missing);
  Sym("MPI_Ireduce_scatter_block", mpi.IreduceScatterBlock, missing);
  Sym("MPI_Ibcast", mpi.Ibcast, missing);
  Sym("MPI_Ibarrier", mpi.Ibarrier, missing);
  Sym("MPI_Test", mpi.Test, missing);
  Sym("ompi_mpi_comm_world", mpi.commWorld, missing);
  Sym("ompi_mpi_errors_return", mpi.errorsReturn, missing);
  Sym("ompi_mpi_float", mpi.dtypes[0], missing);
  Sym("ompi_mpi_double", mpi.dtypes[1], missing);
  Sym("ompi_mpi_int", mpi.dtypes[2], missing);
  Sym("ompi_mpi_op_sum", mpi.ops[0], missing);
  Sym("ompi_mpi_op_max", mpi.ops[1], missing);
  Sym("ompi_mpi_op_min", mpi.ops[2], missing);
  if (!missing.empty()) {
    dlclose(lib);
    mpi = Mpi{};
    return Throw(env, path + " lacks " + missing + " (an Open MPI 4+ libmpi.so.40 is expected)");
  }
  return env.Undefined();
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!mpi.lib) return Throw(env, "MPI library not loaded");
  int done = 0;
  mpi.Initialized(&done);
  if (!done) {
    int rc = mpi.Init(nullptr, nullptr);
    if (rc != kSuccess) return Throw(env, "MPI_Init: " + ErrorText(rc));
    // Errors come back as codes (thrown in JavaScript) instead of aborting the job from inside a call.
    mpi.CommSetErrhandler(mpi.commWorld, mpi.errorsReturn);
  }
  int rank = 0, size = 0;
  mpi.CommRank(mpi.commWorld, &rank);
  mpi.CommSize(mpi.commWorld, &size);
  char version[4096];
  int len = 0;
  mpi.GetLibraryVersion(version, &len);
  Napi::Object out = Napi::Object::New(env);
  out.Set("rank", rank);
  out.Set("size", size);
  out.Set("version", std::string(version, len > 0 ? len : 0));
  return out;
}

struct Buf {
  void* data;
  size_t length;  // elements
};

Buf TypedArrayBuf(const Napi::Value& v) {
  auto ta = v.As<Napi::TypedArray>();
  auto ab = ta.ArrayBuffer();
  return {static_cast<char*>(ab.Data()) + ta.ByteOffset(), ta.ElementLength()};
}

int StoreRequest(Handle req) {
  if (!freeSlots.empty()) {
    int slot = freeSlots.back();
    freeSlots.pop_back();
    requests[slot] = req;
    return slot;
  }
  requests.push_back(req);
  return static_cast<int>(requests.size() - 1);
}

// start(kind, dtype, op, send, recv, root) -> request slot. kind: 0 allreduce (in place on send), 1 allgather,
// 2 reduce-scatter (block), 3 broadcast (in place on send), 4 barrier. dtype: 0 f32, 1 f64, 2 i32. op: 0 sum,
// 1 max, 2 min. The caller keeps the typed arrays alive until test() reports completion.
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!mpi.lib) return Throw(env, "MPI library not loaded");
  int kind = info[0].As<Napi::Number>().Int32Value();
  int dtype = info[1].As<Napi::Number>().Int32Value();
  int op = info[2].As<Napi::Number>().Int32Value();
  if (dtype < 0 || dtype > 2 || op < 0 || op > 2) return Throw(env, "bad dtype or op code");
  Handle dt = mpi.dtypes[dtype], mop = mpi.ops[op], comm = mpi.commWorld, req = nullptr;
  int rc = kSuccess;
  switch (kind) {
    case 0: {
      Buf b = TypedArrayBuf(info[3]);
      rc = mpi.Iallreduce(kInPlace, b.data, static_cast<int>(b.length), dt, mop, comm, &req);
      break;
    }
    case 1: {
      Buf s = TypedArrayBuf(info[3]), r = TypedArrayBuf(info[4]);
      int n = static_cast<int>(s.length);
      rc = mpi.Iallgather(s.data, n, dt, r.data, n, dt, comm, &req);
      break;
    }
    case 2: {
      Buf s = TypedArrayBuf(info[3]), r = TypedArrayBuf(info[4]);
      rc = mpi.IreduceScatterBlock(s.data, r.data, static_cast<int>(r.length), dt, mop, comm, &req);
      break;
    }
    case 3: {
      Buf b = TypedArrayBuf(info[3]);
      int root = info[5].As<Napi::Number>().Int32Value();
      rc = mpi.Ibcast(b.data, static_cast<int>(b.length), dt, root, comm, &req);
      break;
    }
    case 4:
      rc = mpi.Ibarrier(comm, &req);
      break;
    default:
      return Throw(env, "bad collective kind");
  }
  if (rc != kSuccess) return Throw(env, ErrorText(rc));
  return Napi::Number::New(env, StoreRequest(req));
}

// test(slot) -> true when complete (the slot is then free).
Napi::Value Test(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int slot = info[0].As<Napi::Number>().Int32Value();
  if (slot < 0 || slot >= static_cast<int>(requests.size())) return Throw(env, "bad request slot");
  int flag = 0;
  int rc = mpi.Test(&requests[slot], &flag, nullptr /* MPI_STATUS_IGNORE */);
  if (rc != kSuccess) {
    freeSlots.push_back(slot);
    return Throw(env, ErrorText(rc));
  }
  if (flag) freeSlots.push_back(slot);
  return Napi::Boolean::New(env, flag != 0);
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int init = 0, fin = 0;
  if (!mpi.lib) return env.Undefined();
  mpi.Initialized(&init);
  mpi.Finalized(&fin);
  if (init && !fin) {
    int rc = mpi.Finalize();
    if (rc != kSuccess) return Throw(env, "MPI_Finalize: " + ErrorText(rc));
  }
  return env.Undefined();
}

Napi::Value Abort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int code = info[0].As<Napi::Number>().Int32Value();
  if (mpi.lib) mpi.Abort(mpi.commWorld, code);
  return env.Undefined();
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("load", Napi::Function::New(env, Load));
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("start", Napi::Function::New(env, Start));
  exports.Set("test", Napi::Function::New(env, Test));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  exports.Set("abort", Napi::Function::New(env, Abort));
  return exports;
}

}  // namespace

NODE_API_MODULE(qlora_mpi, InitModule)
