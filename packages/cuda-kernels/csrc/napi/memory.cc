// Device status, buffers (handles into the caching allocator), host copies, memory statistics.
#include <cuda_runtime_api.h>

#include <unordered_map>

#include "../runtime/cublas_dyn.h"
#include "../runtime/device.h"
#include "guard.h"
#include "registry.h"

namespace qn {
namespace {

std::unordered_map<uint32_t, DeviceBuffer>& table() {
  static std::unordered_map<uint32_t, DeviceBuffer> t;
  return t;
}
uint32_t nextId = 1;

}  // namespace

uint32_t newHandle(const DeviceBuffer& b) {
  const uint32_t id = nextId++;
  table()[id] = b;
  return id;
}

DeviceBuffer takeHandle(uint32_t id) {
  auto it = table().find(id);
  qk::require(it != table().end(), "free: unknown or already freed buffer handle " + std::to_string(id));
  DeviceBuffer b = it->second;
  table().erase(it);
  return b;
}

DeviceBuffer& buffer(const Napi::CallbackInfo& info, size_t index, size_t minBytes, const char* name) {
  qk::require(info.Length() > index && info[index].IsNumber(), std::string(name) + ": expected a buffer handle (number)");
  const uint32_t id = info[index].As<Napi::Number>().Uint32Value();
  auto it = table().find(id);
  qk::require(it != table().end(), std::string(name) + ": unknown or freed buffer handle " + std::to_string(id));
  qk::require(it->second.bytes >= minBytes, std::string(name) + ": buffer has " + std::to_string(it->second.bytes) +
                                                " bytes, the op needs " + std::to_string(minBytes));
  return it->second;
}

double number(const Napi::CallbackInfo& info, size_t index, const char* name) {
  qk::require(info.Length() > index && info[index].IsNumber(), std::string(name) + ": expected a number");
  return info[index].As<Napi::Number>().DoubleValue();
}

int64_t integer(const Napi::CallbackInfo& info, size_t index, const char* name, int64_t min, int64_t max) {
  const double v = number(info, index, name);
  qk::require(v == static_cast<double>(static_cast<int64_t>(v)) && v >= double(min) && v <= double(max),
              std::string(name) + ": expected an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " + std::to_string(v));
  return static_cast<int64_t>(v);
}

bool boolean(const Napi::CallbackInfo& info, size_t index, const char* name) {
  qk::require(info.Length() > index && info[index].IsBoolean(), std::string(name) + ": expected a boolean");
  return info[index].As<Napi::Boolean>().Value();
}

namespace {

Napi::Value DeviceStatusFn(const Napi::CallbackInfo& info) {
  const qk::DeviceStatus s = qk::probeDevice();
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", s.available);
  o.Set("count", s.count);
  o.Set("code", s.code);
  o.Set("reason", s.reason);
  o.Set("runtimeVersion", s.runtimeVersion);
  o.Set("driverVersion", s.driverVersion);
  o.Set("name", s.name);
  o.Set("computeCapability", std::to_string(s.ccMajor) + "." + std::to_string(s.ccMinor));
  o.Set("smCount", s.smCount);
  o.Set("totalMemory", static_cast<double>(s.totalMemory));
  return o;
}

Napi::Value CublasInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::Runtime::get();  // cublasCreate needs the device
    const qk::CublasStatus& s = qk::cublasStatus();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("loaded", s.loaded);
    o.Set("library", s.library);
    o.Set("detail", s.detail);
    o.Set("version", s.version);
    return o;
  });
}

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t bytes = integer(info, 0, "bytes", 0, int64_t(1) << 46);
    const bool managed = info.Length() > 1 && boolean(info, 1, "managed");
    qk::Runtime& rt = qk::Runtime::get();
    DeviceBuffer b;
    b.bytes = static_cast<size_t>(bytes);
    b.managed = managed;
    b.ptr = managed ? rt.allocateManaged(b.bytes) : rt.allocate(b.bytes);
    // Zero-filled, as Backend.alloc promises (queued on the compute stream).
    QK_CHECK(cudaMemsetAsync(b.ptr, 0, b.bytes, rt.compute()));
    return Napi::Number::New(info.Env(), newHandle(b));
  });
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const DeviceBuffer b = takeHandle(static_cast<uint32_t>(integer(info, 0, "handle", 1, UINT32_MAX)));
    if (b.managed) qk::Runtime::get().releaseManaged(b.ptr);
    else qk::Runtime::get().release(b.ptr);
    return info.Env().Undefined();
  });
}

Napi::Value Upload(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::require(info.Length() > 1 && info[1].IsTypedArray(), "upload: data must be a typed array");
    Napi::TypedArray data = info[1].As<Napi::TypedArray>();
    DeviceBuffer& b = buffer(info, 0, data.ByteLength(), "upload target");
    const uint8_t* src = static_cast<const uint8_t*>(data.ArrayBuffer().Data()) + data.ByteOffset();
    qk::Runtime::get().upload(b.ptr, src, data.ByteLength());
    return info.Env().Undefined();
  });
}

Napi::Value Download(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::require(info.Length() > 1 && info[1].IsTypedArray(), "download: destination must be a typed array");
    Napi::TypedArray data = info[1].As<Napi::TypedArray>();
    DeviceBuffer& b = buffer(info, 0, data.ByteLength(), "download source");
    uint8_t* dst = static_cast<uint8_t*>(data.ArrayBuffer().Data()) + data.ByteOffset();
    qk::Runtime::get().download(dst, b.ptr, data.ByteLength());
    return info.Env().Undefined();
  });
}

Napi::Value Prefetch(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    DeviceBuffer& b = buffer(info, 0, 0, "prefetch");
    if (b.managed) qk::Runtime::get().prefetchToDevice(b.ptr, b.bytes);
    return info.Env().Undefined();
  });
}

Napi::Value MemoryStatsFn(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::Runtime& rt = qk::Runtime::get();
    const qk::MemoryStats s = rt.stats();
    size_t freeBytes = 0, totalBytes = 0;
    rt.memGetInfo(&freeBytes, &totalBytes);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("currentBytes", double(s.currentBytes));
    o.Set("peakBytes", double(s.peakBytes));
    o.Set("reservedBytes", double(s.reservedBytes));
    o.Set("managedBytes", double(s.managedBytes));
    o.Set("allocCalls", double(s.allocCalls));
    o.Set("deviceFreeBytes", double(freeBytes));
    o.Set("deviceTotalBytes", double(totalBytes));
    return o;
  });
}

Napi::Value ResetPeak(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::Runtime::get().resetPeak();
    return info.Env().Undefined();
  });
}

Napi::Value EmptyCache(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::Runtime::get().emptyCache();
    return info.Env().Undefined();
  });
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::Runtime::get().synchronize();
    return info.Env().Undefined();
  });
}

qlora::Register r1("deviceStatus", DeviceStatusFn), r2("cublasInfo", CublasInfo), r3("alloc", Alloc), r4("free", Free),
    r5("upload", Upload), r6("download", Download), r7("prefetch", Prefetch), r8("memoryStats", MemoryStatsFn),
    r9("resetPeak", ResetPeak), r10("emptyCache", EmptyCache), r11("synchronize", Synchronize);

}  // namespace
}  // namespace qn
