#include "isa.h"
#include "registry.h"

namespace {

Napi::Value Info(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto out = Napi::Object::New(env);
  const auto& i = qlora::isa();
  out.Set("avx2", i.avx2_fma);
  out.Set("avx512f", i.avx512f);
  out.Set("avx512bf16", i.avx512bf16);
  return out;
}

qlora::Register reg_info("isaInfo", Info);

}  // namespace
