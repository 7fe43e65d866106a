// SwiGLU: y = silu(gate) · up, and its backward, on flat f32 arrays (vectorised exp via VecOps).
#include <cstdint>

#include "elementwise_vec.h"
#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

constexpr size_t kGrain = 1 << 14;

// swiglu(gate, up, y, length)
Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  Args a(info, "swiglu");
  int64_t n = a.count(3, "length");
  const float* g = a.f32(0, "gate", n);
  const float* u = a.f32(1, "up", n);
  float* y = a.f32(2, "y", n);
  if (!a.ok()) return a.env().Undefined();
  const VecOps& v = vecops();
  parallel_for(n, [&](size_t b, size_t e) { v.swiglu(g + b, u + b, y + b, e - b); }, kGrain);
  return a.env().Undefined();
}

// swigluBackward(dy, gate, up, dgate, dup, length)
Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  Args a(info, "swigluBackward");
  int64_t n = a.count(5, "length");
  const float* dy = a.f32(0, "dy", n);
  const float* g = a.f32(1, "gate", n);
  const float* u = a.f32(2, "up", n);
  float* dg = a.f32(3, "dgate", n);
  float* du = a.f32(4, "dup", n);
  if (!a.ok()) return a.env().Undefined();
  const VecOps& v = vecops();
  parallel_for(n, [&](size_t b, size_t e) { v.swiglu_bwd(dy + b, g + b, u + b, dg + b, du + b, e - b); }, kGrain);
  return a.env().Undefined();
}

Register reg_swiglu("swiglu", Swiglu);
Register reg_swiglu_bwd("swigluBackward", SwigluBackward);

}  // namespace
}  // namespace qlora
