#include "gemm_kernels.h"
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
  out.Set("avx512HalfRate", i.avx512_half_rate);
  return out;
}

Napi::Array Names(Napi::Env env, const char* const* names) {
  auto out = Napi::Array::New(env);
  for (uint32_t i = 0; names[i] != nullptr; ++i) out.Set(i, names[i]);
  return out;
}

// isaPaths(): every ISA variant compiled into this binary, per kernel family, whether or not this CPU
// can run it (tests/isa-paths.ts requires each to be either run or reported as a skipped test).
//   gemm:  the f32 GEMM micro-kernels (the 4-bit GEMM/GEMV follow the same choice)
//   fused: the fused-op levels of setFusedIsaLevel, index = level
Napi::Value IsaPaths(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto out = Napi::Object::New(env);
#if defined(__aarch64__)
  static const char* const fused[] = {"neon", nullptr};  // level 0 = the 128-bit level, NEON on arm64
  out.Set("arch", "arm64");
#else
  static const char* const fused[] = {"sse", "avx2", "avx512", nullptr};
  out.Set("arch", "x64");
#endif
  out.Set("gemm", Names(env, qlora::gemm_kernel_names()));
  out.Set("fused", Names(env, fused));
  return out;
}

qlora::Register reg_info("isaInfo", Info);
qlora::Register reg_isa_paths("isaPaths", IsaPaths);

}  // namespace
