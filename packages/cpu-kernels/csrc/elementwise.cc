// Primitive ops of the Backend: unary, strided broadcasting binary, reduce over the middle axis,
// strided copy with a dtype cast, fill. Also the run-time pick of the VecOps table.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "elementwise_dtype.h"
#include "elementwise_vec.h"
#include "fused_args.h"
#include "isa.h"
#include "pool.h"
#include "registry.h"
#include "rounded.h"

namespace qlora {

namespace {
std::atomic<int> g_isa_cap{2};
int detected_level() { return isa().avx512f ? 2 : isa().avx2_fma ? 1 : 0; }
}  // namespace

int fused_isa_level() { return std::min(detected_level(), g_isa_cap.load(std::memory_order_relaxed)); }

const VecOps& vecops() {
  int level = fused_isa_level();
  return level == 2 ? avx512::kVecOps : level == 1 ? avx2::kVecOps : sse::kVecOps;
}

namespace {

// setFusedIsaLevel(n): cap the fused kernels' ISA (2 AVX-512, 1 AVX2, 0 SSE); returns the level in use.
Napi::Value SetFusedIsaLevel(const Napi::CallbackInfo& info) {
  Args a(info, "setFusedIsaLevel");
  int32_t n = a.int32(0, "level");
  if (a.ok() && (n < 0 || n > 2)) a.fail_range("level", "0, 1 or 2");
  if (!a.ok()) return a.env().Undefined();
  g_isa_cap.store(n);
  return Napi::Number::New(a.env(), fused_isa_level());
}
Register reg_isa_level("setFusedIsaLevel", SetFusedIsaLevel);

constexpr size_t kGrain = 1 << 14;  // elements per parallel chunk for memory-bound loops

// ---- unary (f32) ----
// Codes follow the UnaryOp list of packages/tensor/src/backend/types.ts, in order.
enum Unary { kNeg, kExp, kLog, kSqrt, kRsqrt, kAbs, kSigmoid, kSilu, kRelu, kTanh, kRecip, kSquare, kSign, kUnaryCount };

template <int Op>
void unary_range(const float* x, float* y, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    float v = x[i];
    if constexpr (Op == kNeg) y[i] = -v;
    if constexpr (Op == kExp) y[i] = std::exp(v);
    if constexpr (Op == kLog) y[i] = std::log(v);
    if constexpr (Op == kSqrt) y[i] = std::sqrt(v);
    if constexpr (Op == kRsqrt) y[i] = 1.0f / std::sqrt(v);
    if constexpr (Op == kAbs) y[i] = std::fabs(v);
    if constexpr (Op == kSigmoid) y[i] = 1.0f / (1.0f + std::exp(-v));
    if constexpr (Op == kSilu) y[i] = v / (1.0f + std::exp(-v));
    if constexpr (Op == kRelu) y[i] = v > 0 ? v : 0.0f;  // NaN → 0, as the reference
    if constexpr (Op == kTanh) y[i] = std::tanh(v);
    if constexpr (Op == kRecip) y[i] = 1.0f / v;
    if constexpr (Op == kSquare) y[i] = v * v;
    if constexpr (Op == kSign) y[i] = v > 0 ? 1.0f : v < 0 ? -1.0f : v == 0 ? 0.0f : v;  // ±0 → +0, NaN stays
  }
}

using UnaryFn = void (*)(const float*, float*, size_t, size_t);
constexpr UnaryFn kUnary[kUnaryCount] = {
    unary_range<kNeg>,  unary_range<kExp>,  unary_range<kLog>,   unary_range<kSqrt>,   unary_range<kRsqrt>,
    unary_range<kAbs>,  unary_range<kSigmoid>, unary_range<kSilu>, unary_range<kRelu>, unary_range<kTanh>,
    unary_range<kRecip>, unary_range<kSquare>, unary_range<kSign>};

// unaryF32(op, x, y, n)
Napi::Value UnaryF32(const Napi::CallbackInfo& info) {
  Args a(info, "unaryF32");
  int32_t op = a.int32(0, "op");
  if (a.ok() && (op < 0 || op >= kUnaryCount)) a.fail_range("op", "a unary op code");
  int64_t n = a.count(3, "n");
  const float* x = a.f32(1, "x", n);
  float* y = a.f32(2, "y", n);
  if (!a.ok()) return a.env().Undefined();
  UnaryFn fn = kUnary[op];
  parallel_for(n, [&](size_t b, size_t e) { fn(x, y, b, e); }, kGrain);
  return a.env().Undefined();
}

// ---- binary (f32, strided, broadcasting) ----
enum Binary { kAdd, kSub, kMul, kDiv, kMax, kMin, kPow, kEq, kGt, kLt, kBinaryCount };

template <int Op>
inline float binop(float x, float y) {
  if constexpr (Op == kAdd) return x + y;
  if constexpr (Op == kSub) return x - y;
  if constexpr (Op == kMul) return x * y;
  if constexpr (Op == kDiv) return x / y;
  if constexpr (Op == kMax) return (x != x || y != y) ? NAN : (x > y ? x : y);  // Math.max: NaN wins
  if constexpr (Op == kMin) return (x != x || y != y) ? NAN : (x < y ? x : y);
  if constexpr (Op == kPow) return static_cast<float>(std::pow(static_cast<double>(x), static_cast<double>(y)));
  if constexpr (Op == kEq) return x == y ? 1.0f : 0.0f;
  if constexpr (Op == kGt) return x > y ? 1.0f : 0.0f;
  if constexpr (Op == kLt) return x < y ? 1.0f : 0.0f;
  return 0;
}

struct Strided {
  std::vector<int64_t> shape, as, bs;  // dims after dropping size-1 dims
};

// One output row (the last dim) of a binary op.
template <int Op>
void binary_row(const float* a, int64_t sa, const float* b, int64_t sb, float* y, int64_t n) {
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] = binop<Op>(a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    float bv = *b;
    for (int64_t i = 0; i < n; ++i) y[i] = binop<Op>(a[i], bv);
  } else if (sa == 0 && sb == 1) {
    float av = *a;
    for (int64_t i = 0; i < n; ++i) y[i] = binop<Op>(av, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = binop<Op>(a[i * sa], b[i * sb]);
  }
}

template <int Op>
void binary_rows(const Strided& s, const float* a, const float* b, float* y, size_t r0, size_t r1) {
  const int rank = static_cast<int>(s.shape.size());
  const int64_t n = s.shape[rank - 1];
  for (size_t r = r0; r < r1; ++r) {
    int64_t rem = static_cast<int64_t>(r), oa = 0, ob = 0;
    for (int d = rank - 2; d >= 0; --d) {
      int64_t idx = rem % s.shape[d];
      rem /= s.shape[d];
      oa += idx * s.as[d];
      ob += idx * s.bs[d];
    }
    binary_row<Op>(a + oa, s.as[rank - 1], b + ob, s.bs[rank - 1], y + r * n, n);
  }
}

using BinaryFn = void (*)(const Strided&, const float*, const float*, float*, size_t, size_t);
constexpr BinaryFn kBinary[kBinaryCount] = {binary_rows<kAdd>, binary_rows<kSub>, binary_rows<kMul>, binary_rows<kDiv>,
                                            binary_rows<kMax>, binary_rows<kMin>, binary_rows<kPow>, binary_rows<kEq>,
                                            binary_rows<kGt>,  binary_rows<kLt>};

// Smallest and largest element offsets a view can touch (for the bounds check).
bool view_extent(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, int64_t offset, int64_t* lo,
                 int64_t* hi) {
  *lo = *hi = offset;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) return false;  // empty: touches nothing
    int64_t span = (shape[d] - 1) * strides[d];
    (span < 0 ? *lo : *hi) += span;
  }
  return true;
}

// Checks a view's rank and that every element it reads lies inside an array of `length`.
bool check_view(Args& a, const char* name, const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                int64_t offset, size_t length) {
  if (!a.ok()) return false;
  if (strides.size() != shape.size()) return a.fail_range(name, "a view whose strides match the shape's rank"), false;
  for (int64_t s : shape)
    if (s < 0) return a.fail_range(name, "a view with non-negative sizes"), false;
  int64_t lo, hi;
  if (view_extent(shape, strides, offset, &lo, &hi) && (lo < 0 || hi >= static_cast<int64_t>(length)))
    return a.fail_range(name, "a view inside its buffer"), false;
  return true;
}

int64_t product(const std::vector<int64_t>& v) {
  int64_t p = 1;
  for (int64_t x : v) p *= x;
  return p;
}

size_t typed_length(const Napi::Value& v) { return v.IsTypedArray() ? v.As<Napi::TypedArray>().ElementLength() : 0; }

// binaryF32(op, a, aOffset, aStrides, b, bOffset, bStrides, shape, y)
Napi::Value BinaryF32(const Napi::CallbackInfo& info) {
  Args a(info, "binaryF32");
  int32_t op = a.int32(0, "op");
  if (a.ok() && (op < 0 || op >= kBinaryCount)) a.fail_range("op", "a binary op code");
  const float* pa = a.f32(1, "a", 0);
  int64_t oa = a.count(2, "aOffset");
  auto sa = a.ints(3, "aStrides");
  const float* pb = a.f32(4, "b", 0);
  int64_t ob = a.count(5, "bOffset");
  auto sb = a.ints(6, "bStrides");
  auto shape = a.ints(7, "shape");
  int64_t total = product(shape);
  float* y = a.f32(8, "y", total);
  check_view(a, "aView", shape, sa, oa, typed_length(info[1]));
  check_view(a, "bView", shape, sb, ob, typed_length(info[4]));
  if (!a.ok() || total == 0) return a.env().Undefined();
  Strided s;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    s.shape.push_back(shape[d]);
    s.as.push_back(sa[d]);
    s.bs.push_back(sb[d]);
  }
  if (s.shape.empty()) s.shape = {1}, s.as = {0}, s.bs = {0};
  size_t rows = static_cast<size_t>(total / s.shape.back());
  size_t grain = std::max<size_t>(1, kGrain / static_cast<size_t>(s.shape.back()));
  BinaryFn fn = kBinary[op];
  parallel_for(rows, [&](size_t r0, size_t r1) { fn(s, pa + oa, pb + ob, y, r0, r1); }, grain);
  return a.env().Undefined();
}

// ---- reduce the middle axis of [outer, size, inner] (f32) ----
enum Reduce { kSum, kRMax, kRMin };

void reduce_outer(int op, const float* x, float* y, int64_t size, int64_t inner, std::vector<double>& acc) {
  // Sums accumulate in double (the reference sums JS numbers); max/min propagate NaN like Math.max.
  acc.assign(inner, op == kSum ? 0.0 : op == kRMax ? -INFINITY : INFINITY);
  for (int64_t s = 0; s < size; ++s) {
    const float* row = x + s * inner;
    if (op == kSum) {
      for (int64_t i = 0; i < inner; ++i) acc[i] += row[i];
    } else if (op == kRMax) {
      for (int64_t i = 0; i < inner; ++i) acc[i] = (row[i] != row[i] || row[i] > acc[i]) ? row[i] : acc[i];
    } else {
      for (int64_t i = 0; i < inner; ++i) acc[i] = (row[i] != row[i] || row[i] < acc[i]) ? row[i] : acc[i];
    }
  }
  for (int64_t i = 0; i < inner; ++i) y[i] = static_cast<float>(acc[i]);
}

// reduceF32(op, x, y, outer, size, inner)
Napi::Value ReduceF32(const Napi::CallbackInfo& info) {
  Args a(info, "reduceF32");
  int32_t op = a.int32(0, "op");
  if (a.ok() && (op < 0 || op > kRMin)) a.fail_range("op", "a reduce op code");
  int64_t outer = a.count(3, "outer"), size = a.count(4, "size"), inner = a.count(5, "inner");
  const float* x = a.f32(1, "x", static_cast<double>(outer) * size * inner);
  float* y = a.f32(2, "y", static_cast<double>(outer) * inner);
  if (!a.ok()) return a.env().Undefined();
  // NaN-propagating max/min: once acc is NaN, comparisons are false and it stays NaN.
  size_t grain = std::max<int64_t>(1, static_cast<int64_t>(kGrain) / std::max<int64_t>(1, size * inner));
  parallel_for(outer, [&](size_t o0, size_t o1) {
    std::vector<double> acc;
    for (size_t o = o0; o < o1; ++o) reduce_outer(op, x + o * size * inner, y + o * inner, size, inner, acc);
  }, grain);
  return a.env().Undefined();
}

// ---- copy: strided gather + cast ----
template <DType T> struct Elem;
template <> struct Elem<DType::F32> { using S = float; static double get(S v) { return v; } static S put(double x) { return static_cast<float>(x); } };
template <> struct Elem<DType::F16> { using S = uint16_t; static double get(S v) { return f16_to_f32(v); } static S put(double x) { return f32_to_f16(static_cast<float>(x)); } };
template <> struct Elem<DType::BF16> { using S = uint16_t; static double get(S v) { return bf16_to_f32(v); } static S put(double x) { return f32_to_bf16(static_cast<float>(x)); } };
template <> struct Elem<DType::I32> { using S = int32_t; static double get(S v) { return v; } static S put(double x) { return static_cast<int32_t>(to_uint32_wrap(x)); } };
template <> struct Elem<DType::U8> { using S = uint8_t; static double get(S v) { return v; } static S put(double x) { return static_cast<uint8_t>(to_uint32_wrap(x) & 0xffu); } };
template <> struct Elem<DType::Bool> { using S = uint8_t; static double get(S v) { return v; } static S put(double x) { return x != 0 ? 1 : 0; } };

template <DType From, DType To>
void copy_rows(const Strided& s, const void* src, void* dst, size_t r0, size_t r1) {
  using SF = typename Elem<From>::S;
  using ST = typename Elem<To>::S;
  const int rank = static_cast<int>(s.shape.size());
  const int64_t n = s.shape[rank - 1], ss = s.as[rank - 1], ds = s.bs[rank - 1];
  const SF* in = static_cast<const SF*>(src);
  ST* out = static_cast<ST*>(dst);
  for (size_t r = r0; r < r1; ++r) {
    int64_t rem = static_cast<int64_t>(r), so = 0, dof = 0;
    for (int d = rank - 2; d >= 0; --d) {
      int64_t idx = rem % s.shape[d];
      rem /= s.shape[d];
      so += idx * s.as[d];
      dof += idx * s.bs[d];
    }
    const SF* row = in + so;
    ST* o = out + dof;
    if constexpr (From == To) {
      if (ss == 1 && ds == 1) {
        std::memcpy(o, row, n * sizeof(ST));
      } else {
        for (int64_t i = 0; i < n; ++i) o[i * ds] = row[i * ss];
      }
    } else if constexpr (From == DType::F32 && To == DType::BF16) {
      for (int64_t i = 0; i < n; ++i) o[i * ds] = f32_to_bf16(row[i * ss]);
    } else if constexpr (From == DType::BF16 && To == DType::F32) {
      for (int64_t i = 0; i < n; ++i) o[i * ds] = bf16_to_f32(row[i * ss]);
    } else {
      for (int64_t i = 0; i < n; ++i) o[i * ds] = Elem<To>::put(Elem<From>::get(row[i * ss]));
    }
  }
}

using CopyFn = void (*)(const Strided&, const void*, void*, size_t, size_t);

template <DType From>
constexpr CopyFn copy_to(DType to) {
  switch (to) {
    case DType::F32: return copy_rows<From, DType::F32>;
    case DType::F16: return copy_rows<From, DType::F16>;
    case DType::BF16: return copy_rows<From, DType::BF16>;
    case DType::I32: return copy_rows<From, DType::I32>;
    case DType::U8: return copy_rows<From, DType::U8>;
    case DType::Bool: return copy_rows<From, DType::Bool>;
  }
  return nullptr;
}

CopyFn copy_fn(DType from, DType to) {
  switch (from) {
    case DType::F32: return copy_to<DType::F32>(to);
    case DType::F16: return copy_to<DType::F16>(to);
    case DType::BF16: return copy_to<DType::BF16>(to);
    case DType::I32: return copy_to<DType::I32>(to);
    case DType::U8: return copy_to<DType::U8>(to);
    case DType::Bool: return copy_to<DType::Bool>(to);
  }
  return nullptr;
}

// copy(src, srcDtype, srcOffset, srcStrides, shape, dst, dstDtype, dstOffset, dstStrides)
// dst[dstView] = cast(src[srcView]); both views have `shape`. The caller makes sure the two
// views do not overlap in memory (src/fused.ts delegates that case to the reference).
Napi::Value Copy(const Napi::CallbackInfo& info) {
  Args a(info, "copy");
  DType from = a.dtype(1, "srcDtype");
  const void* src = a.typed(0, "src", from, 0);
  int64_t so = a.count(2, "srcOffset");
  auto sst = a.ints(3, "srcStrides");
  auto shape = a.ints(4, "shape");
  DType to = a.dtype(6, "dstDtype");
  void* dst = a.typed(5, "dst", to, 0);
  int64_t dof = a.count(7, "dstOffset");
  auto dst_strides = a.ints(8, "dstStrides");
  int64_t total = product(shape);
  check_view(a, "srcView", shape, sst, so, typed_length(info[0]));
  check_view(a, "dstView", shape, dst_strides, dof, typed_length(info[5]));
  if (!a.ok() || total == 0) return a.env().Undefined();
  // Drop size-1 dims and merge dims that are contiguous in both views, so rows are long.
  Strided s;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!s.shape.empty() && s.as.back() == sst[d] * shape[d] && s.bs.back() == dst_strides[d] * shape[d]) {
      s.shape.back() *= shape[d];
      s.as.back() = sst[d];
      s.bs.back() = dst_strides[d];
    } else {
      s.shape.push_back(shape[d]);
      s.as.push_back(sst[d]);
      s.bs.push_back(dst_strides[d]);
    }
  }
  if (s.shape.empty()) s.shape = {1}, s.as = {0}, s.bs = {0};
  const auto* sbase = static_cast<const uint8_t*>(src) + so * dtype_bytes(from);
  auto* dbase = static_cast<uint8_t*>(dst) + dof * dtype_bytes(to);
  size_t rows = static_cast<size_t>(total / s.shape.back());
  size_t grain = std::max<size_t>(1, kGrain / static_cast<size_t>(s.shape.back()));
  CopyFn fn = copy_fn(from, to);
  parallel_for(rows, [&](size_t r0, size_t r1) { fn(s, sbase, dbase, r0, r1); }, grain);
  return a.env().Undefined();
}

// axpyF32(dst, dstOffset, src, srcOffset, n, alpha): dst[dstOffset + i] += alpha · src[srcOffset + i], i < n.
// The dense f32 case of addInPlace (gradient accumulation), bit-identical to the reference's
// `o[i] += alpha * x[i]`: that evaluates in double and rounds once to f32, which for alpha = 1 equals one
// f32 addition (double has ≥ 2·24 + 2 bits, so rounding twice is harmless); other alphas run in double, the
// product rounded before the add (rounded(): no FMA contraction on arm64).
Napi::Value AxpyF32(const Napi::CallbackInfo& info) {
  Args a(info, "axpyF32");
  int64_t d0 = a.count(1, "dstOffset"), s0 = a.count(3, "srcOffset"), n = a.count(4, "n");
  float* dst = a.f32(0, "dst", static_cast<double>(d0) + n);
  const float* src = a.f32(2, "src", static_cast<double>(s0) + n);
  double alpha = a.number(5, "alpha");
  if (!a.ok()) return a.env().Undefined();
  float* d = dst + d0;
  const float* x = src + s0;
  parallel_for(n, [&](size_t b, size_t e) {
    if (alpha == 1.0)
      for (size_t i = b; i < e; ++i) d[i] += x[i];
    else
      for (size_t i = b; i < e; ++i) d[i] = static_cast<float>(static_cast<double>(d[i]) + rounded(alpha * x[i]));
  }, kGrain);
  return a.env().Undefined();
}

// fill(dst, dtype, length, value)
Napi::Value Fill(const Napi::CallbackInfo& info) {
  Args a(info, "fill");
  DType t = a.dtype(1, "dtype");
  int64_t n = a.count(2, "length");
  void* dst = a.typed(0, "dst", t, n);
  double value = a.number(3, "value");
  if (!a.ok()) return a.env().Undefined();
  uint8_t pattern[4];
  store_elem(pattern, t, 0, value);
  const int bytes = dtype_bytes(t);
  parallel_for(n, [&](size_t b, size_t e) {
    auto* p = static_cast<uint8_t*>(dst);
    for (size_t i = b; i < e; ++i) std::memcpy(p + i * bytes, pattern, bytes);
  }, kGrain);
  return a.env().Undefined();
}

Register reg_unary("unaryF32", UnaryF32);
Register reg_binary("binaryF32", BinaryF32);
Register reg_reduce("reduceF32", ReduceF32);
Register reg_copy("copy", Copy);
Register reg_fill("fill", Fill);
Register reg_axpy("axpyF32", AxpyF32);

}  // namespace
}  // namespace qlora
