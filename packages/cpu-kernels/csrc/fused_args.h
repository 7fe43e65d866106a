// N-API argument reading for the fused-op kernels: typed arrays checked against the lengths the
// shapes require, numbers checked for range. The first failure throws one JS error naming the
// argument; later reads return harmless defaults so the caller checks `ok()` once, then returns.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "elementwise_dtype.h"

namespace qlora {

class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* fn) : info_(info), fn_(fn) {}

  bool ok() const { return ok_; }
  Napi::Env env() const { return info_.Env(); }

  double number(size_t i, const char* name) {
    if (!ok_) return 0;
    if (i >= info_.Length() || !info_[i].IsNumber()) return fail_type(name, "a number"), 0;
    return info_[i].As<Napi::Number>().DoubleValue();
  }

  // A non-negative integer that fits in int64 (shapes, counts).
  int64_t count(size_t i, const char* name) {
    double v = number(i, name);
    if (ok_ && (v < 0 || v != std::floor(v) || v > 9.0e15)) fail_range(name, "a non-negative integer");
    return ok_ ? static_cast<int64_t>(v) : 0;
  }

  int32_t int32(size_t i, const char* name) {
    double v = number(i, name);
    if (ok_ && (v != std::floor(v) || v < -2147483648.0 || v > 2147483647.0)) fail_range(name, "an int32");
    return ok_ ? static_cast<int32_t>(v) : 0;
  }

  bool boolean(size_t i, const char* name) {
    if (!ok_) return false;
    if (i >= info_.Length() || !info_[i].IsBoolean()) return fail_type(name, "a boolean"), false;
    return info_[i].As<Napi::Boolean>().Value();
  }

  bool is_null(size_t i) const { return i >= info_.Length() || info_[i].IsNull() || info_[i].IsUndefined(); }

  // A typed array of the given kind holding at least `need` elements.
  template <typename T>
  T* array(size_t i, const char* name, napi_typedarray_type type, double need) {
    if (!ok_) return nullptr;
    if (i >= info_.Length() || !info_[i].IsTypedArray() ||
        info_[i].As<Napi::TypedArray>().TypedArrayType() != type) {
      fail_type(name, type_name(type));
      return nullptr;
    }
    auto arr = info_[i].As<Napi::TypedArray>();
    if (static_cast<double>(arr.ElementLength()) < need) {
      fail_range(name, ("at least " + std::to_string(static_cast<int64_t>(need)) + " elements, got " +
                        std::to_string(arr.ElementLength()))
                           .c_str());
      return nullptr;
    }
    auto* base = static_cast<uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
    return reinterpret_cast<T*>(base);
  }
  float* f32(size_t i, const char* name, double need) { return array<float>(i, name, napi_float32_array, need); }
  int32_t* i32(size_t i, const char* name, double need) { return array<int32_t>(i, name, napi_int32_array, need); }
  uint16_t* u16(size_t i, const char* name, double need) { return array<uint16_t>(i, name, napi_uint16_array, need); }
  uint8_t* u8(size_t i, const char* name, double need) { return array<uint8_t>(i, name, napi_uint8_array, need); }

  // A JS array of integers (a shape or strides), at most 16 long.
  std::vector<int64_t> ints(size_t i, const char* name) {
    std::vector<int64_t> out;
    if (!ok_) return out;
    if (i >= info_.Length() || !info_[i].IsArray()) return fail_type(name, "an array of integers"), out;
    auto arr = info_[i].As<Napi::Array>();
    if (arr.Length() > 16) return fail_range(name, "at most 16 long"), out;
    for (uint32_t k = 0; k < arr.Length(); ++k) {
      Napi::Value v = arr.Get(k);
      double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
      if (!(d == std::floor(d)) || std::fabs(d) > 9.0e15) return fail_range(name, "an array of integers"), out;
      out.push_back(static_cast<int64_t>(d));
    }
    return out;
  }

  // The host dtype code of src/fused.ts (elementwise_dtype.h), 0..5.
  DType dtype(size_t i, const char* name) {
    int32_t v = int32(i, name);
    if (ok_ && (v < 0 || v > 5)) fail_range(name, "a dtype code 0..5");
    return static_cast<DType>(ok_ ? v : 0);
  }

  // A typed array matching a host dtype (f32 Float32Array, f16/bf16 Uint16Array, i32 Int32Array,
  // u8/bool Uint8Array) holding at least `need` elements.
  void* typed(size_t i, const char* name, DType t, double need) {
    switch (t) {
      case DType::F32: return f32(i, name, need);
      case DType::F16:
      case DType::BF16: return u16(i, name, need);
      case DType::I32: return i32(i, name, need);
      default: return u8(i, name, need);
    }
  }

  void fail_range(const char* name, const char* expected) {
    if (!ok_) return;
    ok_ = false;
    Napi::RangeError::New(env(), std::string(fn_) + ": argument " + name + " must be " + expected)
        .ThrowAsJavaScriptException();
  }
  void fail_type(const char* name, const char* expected) {
    if (!ok_) return;
    ok_ = false;
    Napi::TypeError::New(env(), std::string(fn_) + ": argument " + name + " must be " + expected)
        .ThrowAsJavaScriptException();
  }

 private:
  static const char* type_name(napi_typedarray_type t) {
    switch (t) {
      case napi_float32_array: return "a Float32Array";
      case napi_int32_array: return "an Int32Array";
      case napi_uint16_array: return "a Uint16Array";
      case napi_uint8_array: return "a Uint8Array";
      default: return "a typed array";
    }
  }

  const Napi::CallbackInfo& info_;
  const char* fn_;
  bool ok_ = true;
};

}  // namespace qlora
