#include "registry.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  for (const auto& entry : qlora::registry()) {
    exports.Set(entry.name, Napi::Function::New(env, entry.fn, entry.name));
  }
  return exports;
}

NODE_API_MODULE(qlora_cuda, Init)
