// Argument checking shared by the GEMM-family N-API entry points: every failure throws a JS
// TypeError/RangeError naming the argument and returns false, so callers just `return` on false.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace qlora::gemm_args {

inline bool fail_type(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return false;
}
inline bool fail_range(Napi::Env env, const std::string& msg) {
  Napi::RangeError::New(env, msg).ThrowAsJavaScriptException();
  return false;
}

// A non-negative integer (<= 2^53) argument.
inline bool get_size(Napi::Env env, const Napi::Value& v, const char* name, int64_t& out) {
  if (!v.IsNumber()) return fail_type(env, std::string(name) + ": expected a non-negative integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != std::floor(d) || d > 9007199254740991.0)
    return fail_range(env, std::string(name) + ": expected a non-negative integer, got " + std::to_string(d));
  out = static_cast<int64_t>(d);
  return true;
}

inline bool get_bool(Napi::Env env, const Napi::Value& v, const char* name, bool& out) {
  if (v.IsUndefined()) {
    out = false;
    return true;
  }
  if (!v.IsBoolean()) return fail_type(env, std::string(name) + ": expected a boolean");
  out = v.As<Napi::Boolean>().Value();
  return true;
}

// a * b for sizes, or fails (RangeError naming `what`) when the product exceeds 2^53.
inline bool checked_mul(Napi::Env env, int64_t a, int64_t b, const char* what, int64_t& out) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r) || r > 9007199254740991LL)
    return fail_range(env, std::string(what) + ": size overflows (" + std::to_string(a) + " x " + std::to_string(b) + ")");
  out = r;
  return true;
}

template <typename T>
struct ArrayOf;
template <>
struct ArrayOf<float> {
  static constexpr napi_typedarray_type type = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct ArrayOf<uint16_t> {
  static constexpr napi_typedarray_type type = napi_uint16_array;
  static constexpr const char* name = "Uint16Array";
};
template <>
struct ArrayOf<uint8_t> {
  static constexpr napi_typedarray_type type = napi_uint8_array;
  static constexpr const char* name = "Uint8Array";
};

inline bool is_typed(const Napi::Value& v, napi_typedarray_type t) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == t;
}

// A typed array of element type T holding at least `need` elements.
template <typename T>
bool get_array(Napi::Env env, const Napi::Value& v, const char* name, int64_t need, T*& data) {
  if (!is_typed(v, ArrayOf<T>::type)) return fail_type(env, std::string(name) + ": expected a " + ArrayOf<T>::name);
  auto arr = v.As<Napi::TypedArrayOf<T>>();
  if (static_cast<int64_t>(arr.ElementLength()) < need)
    return fail_range(env, std::string(name) + ": expected at least " + std::to_string(need) + " elements, got " +
                               std::to_string(arr.ElementLength()));
  data = arr.Data();
  return true;
}

}  // namespace qlora::gemm_args
