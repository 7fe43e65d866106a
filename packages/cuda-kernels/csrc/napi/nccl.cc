// N-API layer of the NCCL communicator (src/nccl.ts). libnccl is dlopened (runtime/nccl_dyn.*). The collectives
// take host typed arrays (the Communicator interface of @qlora/distributed): the input is copied into pinned
// staging at once, then H2D copy, the NCCL call and the D2H copy are queued on the communicator's own stream and
// an event is recorded; JS polls ncclTest(slot) from the event loop (so a wait never blocks Node and a timeout
// can abort the communicator) and ncclFinish(slot, out) copies the result into the caller's array.
// ncclCommInitRank blocks until every rank has joined, so it runs on a libuv worker thread (a Promise).
// Compiled, not run on a GPU.
#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "../runtime/device.h"
#include "../runtime/nccl_dyn.h"
#include "guard.h"
#include "registry.h"

namespace qn {
namespace {

struct CommEntry {
  qk::nccl::CommT comm = nullptr;
  int nranks = 0, rank = 0;
  cudaStream_t stream = nullptr;
  bool aborted = false;
};

struct Pending {
  uint32_t comm = 0;
  void* pinnedIn = nullptr;
  void* pinnedOut = nullptr;
  void* devIn = nullptr;
  void* devOut = nullptr;  // == devIn for in-place kinds
  size_t outBytes = 0;
  cudaEvent_t done = nullptr;
};

std::unordered_map<uint32_t, CommEntry>& comms() {
  static std::unordered_map<uint32_t, CommEntry> t;
  return t;
}
std::unordered_map<uint32_t, Pending>& pendings() {
  static std::unordered_map<uint32_t, Pending> t;
  return t;
}
uint32_t nextComm = 1, nextSlot = 1;

enum Kind { ALL_REDUCE = 0, ALL_GATHER = 1, REDUCE_SCATTER = 2, BROADCAST = 3 };

CommEntry& commArg(const Napi::CallbackInfo& info, size_t i) {
  const uint32_t id = uint32_t(integer(info, i, "comm", 1, UINT32_MAX));
  auto it = comms().find(id);
  qk::require(it != comms().end(), "nccl: unknown or destroyed communicator handle " + std::to_string(id));
  qk::require(!it->second.aborted, "nccl: the communicator was aborted (after a timeout or an error)");
  return it->second;
}

Napi::TypedArray typedArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  qk::require(info.Length() > i && info[i].IsTypedArray(), std::string(name) + ": expected a typed array");
  return info[i].As<Napi::TypedArray>();
}

/** NCCL data type of a Float32Array / Float64Array / Int32Array (the Communicator's CommArray). */
int ncclDtype(const Napi::TypedArray& a, const char* name) {
  switch (a.TypedArrayType()) {
    case napi_float32_array: return qk::nccl::FLOAT32;
    case napi_float64_array: return qk::nccl::FLOAT64;
    case napi_int32_array: return qk::nccl::INT32;
    default: throw qk::ArgError(std::string(name) + ": must be a Float32Array, Float64Array or Int32Array");
  }
}

const void* bytesOf(const Napi::TypedArray& a) {
  return static_cast<const char*>(a.ArrayBuffer().Data()) + a.ByteOffset();
}

// ncclLoad(names: string[]) → { loaded, library, detail, version }; never throws for a missing library.
Napi::Value NcclLoad(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::require(info.Length() > 0 && info[0].IsArray(), "ncclLoad: names must be an array of library names");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<std::string> names;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value v = a.Get(i);
      qk::require(v.IsString(), "ncclLoad: every library name must be a string");
      names.push_back(v.As<Napi::String>().Utf8Value());
    }
    qk::require(!names.empty(), "ncclLoad: give at least one library name");
    const qk::NcclStatus& s = qk::ncclLoad(names);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("loaded", s.loaded);
    o.Set("library", s.library);
    o.Set("detail", s.detail);
    o.Set("version", s.version);
    return o;
  });
}

// ncclUniqueId() → Uint8Array(128) (rank 0 creates it; the rendezvous hands it to the others)
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::nccl::UniqueId id;
    qk::ncclCheck(qk::ncclApi().getUniqueId(&id), "ncclGetUniqueId");
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof(id.internal));
    std::memcpy(out.Data(), id.internal, sizeof(id.internal));
    return out;
  });
}

class InitWorker : public Napi::AsyncWorker {
 public:
  InitWorker(Napi::Env env, const qk::nccl::UniqueId& id, int nranks, int rank, int device)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), id_(id), nranks_(nranks), rank_(rank),
        device_(device) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    // cudaSetDevice is per thread: the communicator binds to the device current here (the runtime's).
    cudaError_t e = cudaSetDevice(device_);
    if (e != cudaSuccess) return SetError(std::string("cudaSetDevice: ") + cudaGetErrorString(e));
    const qk::nccl::Api& api = qk::ncclApi();
    rc_ = api.commInitRank(&comm_, nranks_, id_, rank_);
    if (rc_ != 0) SetError("ncclCommInitRank failed: NCCL error " + std::to_string(rc_) + " (" + api.getErrorString(rc_) + ")");
  }
  void OnOK() override {
    CommEntry c;
    c.comm = comm_;
    c.nranks = nranks_;
    c.rank = rank_;
    cudaError_t e = cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      qk::ncclApi().commDestroy(comm_);
      deferred_.Reject(Napi::Error::New(Env(), std::string("cudaStreamCreate: ") + cudaGetErrorString(e)).Value());
      return;
    }
    const uint32_t id = nextComm++;
    comms()[id] = c;
    deferred_.Resolve(Napi::Number::New(Env(), id));
  }
  void OnError(const Napi::Error& err) override {
    Napi::Error e = Napi::Error::New(Env(), err.Message());
    e.Set("ncclCode", Napi::Number::New(Env(), rc_));
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  qk::nccl::UniqueId id_;
  int nranks_, rank_, device_;
  int rc_ = 0;
  qk::nccl::CommT comm_ = nullptr;
};

// ncclInitRank(id: Uint8Array(128), nranks, rank, device) → Promise<comm handle>
Napi::Value NcclInitRank(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::require(info.Length() > 0 && info[0].IsTypedArray() && info[0].As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array,
                "ncclInitRank: id must be a Uint8Array");
    Napi::Uint8Array idArr = info[0].As<Napi::Uint8Array>();
    qk::nccl::UniqueId id;
    qk::require(idArr.ByteLength() == sizeof(id.internal), "ncclInitRank: id must have 128 bytes, got " + std::to_string(idArr.ByteLength()));
    const int nranks = int(integer(info, 1, "nranks", 1, 1 << 20));
    const int rank = int(integer(info, 2, "rank", 0, nranks - 1));
    const int device = int(integer(info, 3, "device", 0, 1 << 16));
    qk::ncclApi();  // a clear error when NCCL is not loaded
    qk::Runtime::selectDevice(device);
    qk::Runtime::get();  // create the runtime (and make the device current) on this thread first
    std::memcpy(id.internal, idArr.Data(), sizeof(id.internal));
    auto* w = new InitWorker(info.Env(), id, nranks, rank, device);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

void releasePending(Pending& p, bool deviceToo) {
  if (p.pinnedIn) cudaFreeHost(p.pinnedIn);
  if (p.pinnedOut) cudaFreeHost(p.pinnedOut);
  if (p.done) cudaEventDestroy(p.done);
  if (deviceToo) {
    if (p.devOut && p.devOut != p.devIn) qk::Runtime::get().release(p.devOut);
    if (p.devIn) qk::Runtime::get().release(p.devIn);
  }
  p = Pending{};
}

// ncclStart(comm, kind, op, root, input) → slot. The output length follows from kind (allGather ×nranks,
// reduceScatter ÷nranks, otherwise the input's); the input is read now and may be reused at once.
Napi::Value NcclStart(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const uint32_t commId = uint32_t(integer(info, 0, "comm", 1, UINT32_MAX));
    CommEntry& c = commArg(info, 0);
    const int kind = int(integer(info, 1, "kind", 0, 3));
    const int op = int(integer(info, 2, "op", 0, 3));
    const int root = int(integer(info, 3, "root", 0, c.nranks - 1));
    Napi::TypedArray in = typedArg(info, 4, "input");
    const int dt = ncclDtype(in, "input");
    const size_t es = dt == qk::nccl::FLOAT64 ? 8 : 4;
    const size_t count = in.ElementLength();
    qk::require(kind != REDUCE_SCATTER || count % size_t(c.nranks) == 0,
                "reduceScatter: input length " + std::to_string(count) + " is not divisible by the world size " + std::to_string(c.nranks));
    const size_t inBytes = count * es;
    const size_t outBytes = kind == ALL_GATHER ? inBytes * c.nranks : kind == REDUCE_SCATTER ? inBytes / c.nranks : inBytes;
    const bool inPlace = kind == ALL_REDUCE || kind == BROADCAST;
    qk::Runtime& rt = qk::Runtime::get();
    Pending p;
    p.comm = commId;
    p.outBytes = outBytes;
    try {
      QK_CHECK(cudaMallocHost(&p.pinnedIn, std::max<size_t>(inBytes, 1)));
      QK_CHECK(cudaMallocHost(&p.pinnedOut, std::max<size_t>(outBytes, 1)));
      QK_CHECK(cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming));
      p.devIn = rt.allocate(std::max<size_t>(inBytes, 1));
      p.devOut = inPlace ? p.devIn : rt.allocate(std::max<size_t>(outBytes, 1));
      std::memcpy(p.pinnedIn, bytesOf(in), inBytes);
      QK_CHECK(cudaMemcpyAsync(p.devIn, p.pinnedIn, inBytes, cudaMemcpyHostToDevice, c.stream));
      const qk::nccl::Api& api = qk::ncclApi();
      switch (kind) {
        case ALL_REDUCE: qk::ncclCheck(api.allReduce(p.devIn, p.devOut, count, dt, op, c.comm, c.stream), "ncclAllReduce"); break;
        case ALL_GATHER: qk::ncclCheck(api.allGather(p.devIn, p.devOut, count, dt, c.comm, c.stream), "ncclAllGather"); break;
        case REDUCE_SCATTER:
          qk::ncclCheck(api.reduceScatter(p.devIn, p.devOut, count / c.nranks, dt, op, c.comm, c.stream), "ncclReduceScatter");
          break;
        default: qk::ncclCheck(api.broadcast(p.devIn, p.devOut, count, dt, root, c.comm, c.stream), "ncclBroadcast");
      }
      QK_CHECK(cudaMemcpyAsync(p.pinnedOut, p.devOut, outBytes, cudaMemcpyDeviceToHost, c.stream));
      QK_CHECK(cudaEventRecord(p.done, c.stream));
    } catch (...) {
      releasePending(p, false);  // device blocks may still be read by queued work: left to the allocator's owner
      throw;
    }
    const uint32_t slot = nextSlot++;
    pendings()[slot] = p;
    return Napi::Number::New(info.Env(), slot);
  });
}

Pending& slotArg(const Napi::CallbackInfo& info, size_t i) {
  const uint32_t slot = uint32_t(integer(info, i, "slot", 1, UINT32_MAX));
  auto it = pendings().find(slot);
  qk::require(it != pendings().end(), "nccl: unknown or finished collective slot " + std::to_string(slot));
  return it->second;
}

// ncclTest(slot) → true when complete; throws on a CUDA error or an asynchronous NCCL error of the communicator.
Napi::Value NcclTest(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    Pending& p = slotArg(info, 0);
    auto it = comms().find(p.comm);
    qk::require(it != comms().end() && !it->second.aborted, "nccl: the collective's communicator was aborted or destroyed");
    int async = 0;
    qk::ncclCheck(qk::ncclApi().commGetAsyncError(it->second.comm, &async), "ncclCommGetAsyncError");
    if (async != 0 && async != qk::nccl::IN_PROGRESS) qk::ncclCheck(async, "collective (asynchronous NCCL error)");
    const cudaError_t e = cudaEventQuery(p.done);
    if (e == cudaErrorNotReady) return Napi::Boolean::New(info.Env(), false);
    QK_CHECK(e);
    return Napi::Boolean::New(info.Env(), true);
  });
}

// ncclFinish(slot, out): copies the result into `out` (its byte length must equal the result's) and frees the slot.
Napi::Value NcclFinish(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const uint32_t slot = uint32_t(integer(info, 0, "slot", 1, UINT32_MAX));
    Pending& p = slotArg(info, 0);
    Napi::TypedArray out = typedArg(info, 1, "out");
    qk::require(out.ByteLength() == p.outBytes, "ncclFinish: out has " + std::to_string(out.ByteLength()) +
                                                    " bytes, the result has " + std::to_string(p.outBytes));
    QK_CHECK(cudaEventSynchronize(p.done));  // complete already (ncclTest said so): returns at once
    std::memcpy(const_cast<void*>(bytesOf(out)), p.pinnedOut, p.outBytes);
    releasePending(p, true);
    pendings().erase(slot);
    return info.Env().Undefined();
  });
}

// ncclAbort(comm): ncclCommAbort (queued NCCL kernels exit); the communicator's slots are dropped without touching
// their device blocks (the process is expected to end: src/nccl.ts abort()/timeouts).
Napi::Value NcclAbort(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const uint32_t id = uint32_t(integer(info, 0, "comm", 1, UINT32_MAX));
    auto it = comms().find(id);
    qk::require(it != comms().end(), "ncclAbort: unknown communicator handle " + std::to_string(id));
    if (!it->second.aborted) {
      it->second.aborted = true;
      qk::ncclCheck(qk::ncclApi().commAbort(it->second.comm), "ncclCommAbort");
    }
    for (auto p = pendings().begin(); p != pendings().end();) {
      if (p->second.comm == id) {
        releasePending(p->second, false);
        p = pendings().erase(p);
      } else {
        ++p;
      }
    }
    return info.Env().Undefined();
  });
}

// ncclDestroy(comm): after every collective finished (checked), ncclCommDestroy and the stream.
Napi::Value NcclDestroy(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const uint32_t id = uint32_t(integer(info, 0, "comm", 1, UINT32_MAX));
    auto it = comms().find(id);
    qk::require(it != comms().end(), "ncclDestroy: unknown or destroyed communicator handle " + std::to_string(id));
    for (const auto& p : pendings())
      qk::require(p.second.comm != id, "ncclDestroy: collectives of this communicator are still pending");
    CommEntry c = it->second;
    comms().erase(it);
    if (!c.aborted) qk::ncclCheck(qk::ncclApi().commDestroy(c.comm), "ncclCommDestroy");
    if (c.stream) cudaStreamDestroy(c.stream);
    return info.Env().Undefined();
  });
}

qlora::Register r1("ncclLoad", NcclLoad), r2("ncclUniqueId", NcclUniqueId), r3("ncclInitRank", NcclInitRank),
    r4("ncclStart", NcclStart), r5("ncclTest", NcclTest), r6("ncclFinish", NcclFinish), r7("ncclAbort", NcclAbort),
    r8("ncclDestroy", NcclDestroy);

}  // namespace
}  // namespace qn
