// N-API access to the thread pool (pool.cc): getThreads(), setThreads(n).
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

Napi::Value GetThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), num_threads()); }

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber() || info[0].As<Napi::Number>().Int32Value() < 1) {
    Napi::TypeError::New(info.Env(), "setThreads(n): expected a positive integer n").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  set_num_threads(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Register reg_get_threads("getThreads", GetThreads);
Register reg_set_threads("setThreads", SetThreads);

}  // namespace
}  // namespace qlora
