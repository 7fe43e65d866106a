// N-API boundary: argument readers that validate (RangeError/TypeError naming the argument), the
// device-buffer handle table, and guard() which turns qk::CudaError / qk::ArgError into JS errors
// (CudaError keeps the runtime's code and the call site in the message). Nothing crosses into JS
// as a C++ exception and no kernel sees an unchecked pointer.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

#include "../runtime/check.h"

namespace qn {

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  bool managed = false;
};

/** The buffer behind handle argument `index`; throws ArgError if unknown or smaller than minBytes. */
DeviceBuffer& buffer(const Napi::CallbackInfo& info, size_t index, size_t minBytes, const char* name);
uint32_t newHandle(const DeviceBuffer& b);
DeviceBuffer takeHandle(uint32_t id);

double number(const Napi::CallbackInfo& info, size_t index, const char* name);
int64_t integer(const Napi::CallbackInfo& info, size_t index, const char* name, int64_t min, int64_t max);
bool boolean(const Napi::CallbackInfo& info, size_t index, const char* name);

template <class F>
Napi::Value guard(const Napi::CallbackInfo& info, F&& body) {
  Napi::Env env = info.Env();
  try {
    return body();
  } catch (const qk::ArgError& e) {
    Napi::RangeError::New(env, e.what()).ThrowAsJavaScriptException();
  } catch (const qk::CudaError& e) {
    Napi::Error err = Napi::Error::New(env, e.what());
    err.Set("cudaCode", Napi::Number::New(env, e.code));
    err.ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string("cuda-kernels: ") + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace qn
