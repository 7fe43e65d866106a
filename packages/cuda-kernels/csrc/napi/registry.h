// Kernel files register their N-API functions at static-initialisation time; binding.cc exports
// them all. Usage in a kernel file:  static qlora::Register reg_gemm("alloc", Alloc);
#pragma once
#include <napi.h>
#include <vector>

namespace qlora {

struct Entry {
  const char* name;
  Napi::Value (*fn)(const Napi::CallbackInfo&);
};

inline std::vector<Entry>& registry() {
  static std::vector<Entry> entries;
  return entries;
}

struct Register {
  Register(const char* name, Napi::Value (*fn)(const Napi::CallbackInfo&)) { registry().push_back({name, fn}); }
};

}  // namespace qlora
