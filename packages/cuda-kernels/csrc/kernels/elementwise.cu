// fill / strided copy with cast / unary / broadcasting binary / axis reduce. References: the
// reference backend's ops (packages/tensor/src/backend/reference.ts), f32 compute.
#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

__device__ __forceinline__ void storeAs(void* p, int dtype, int64_t i, float v) {
  switch (dtype) {
    case F32: static_cast<float*>(p)[i] = v; break;
    case F16: static_cast<uint16_t*>(p)[i] = floatToF16(v); break;
    case BF16: static_cast<uint16_t*>(p)[i] = floatToBf16(v); break;
    // The reference's casts (types.ts refinement 1): float→i32 truncates toward zero, non-finite → 0;
    // float→u8 truncates then keeps the low 8 bits; →bool is (x ≠ 0).
    case I32: static_cast<int32_t*>(p)[i] = isfinite(v) ? static_cast<int32_t>(truncf(v)) : 0; break;
    case U8: static_cast<uint8_t*>(p)[i] = isfinite(v) ? static_cast<uint8_t>(static_cast<int64_t>(truncf(v)) & 0xff) : 0; break;
    default: static_cast<uint8_t*>(p)[i] = v != 0.f ? 1 : 0; break;
  }
}

// Element i of a contiguous array of `shape` → offset through `view` (row-major unravel).
__device__ __forceinline__ int64_t stridedOffset(const View& v, int64_t i) {
  int64_t off = v.offset;
  for (int d = v.rank - 1; d >= 0; --d) {
    const int64_t extent = v.shape[d];
    off += (i % extent) * v.strides[d];
    i /= extent;
  }
  return off;
}

__global__ void fillKernel(void* out, int dtype, int64_t n, float value, int32_t ivalue) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (dtype == I32) static_cast<int32_t*>(out)[i] = ivalue;
    else storeAs(out, dtype, i, value);
  }
}

// Integer → integer copies keep exact values (i32 ids beyond 2^24 must not pass through float).
__global__ void copyKernel(const void* src, int srcDtype, View view, int64_t n, void* dst, int dstDtype) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = stridedOffset(view, i);
    if (srcDtype == I32 && dstDtype == I32) static_cast<int32_t*>(dst)[i] = static_cast<const int32_t*>(src)[o];
    else if (srcDtype == dstDtype && dtypeSize(srcDtype) == 1) static_cast<uint8_t*>(dst)[i] = static_cast<const uint8_t*>(src)[o];
    else if (srcDtype == dstDtype && dtypeSize(srcDtype) == 2) static_cast<uint16_t*>(dst)[i] = static_cast<const uint16_t*>(src)[o];
    else storeAs(dst, dstDtype, i, loadAs(src, srcDtype, o));
  }
}

__global__ void scatterKernel(void* dst, int dstDtype, View dv, const void* src, int srcDtype, View sv, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t so = stridedOffset(sv, i), d = stridedOffset(dv, i);
    if (srcDtype == I32 && dstDtype == I32) static_cast<int32_t*>(dst)[d] = static_cast<const int32_t*>(src)[so];
    else storeAs(dst, dstDtype, d, loadAs(src, srcDtype, so));
  }
}

__device__ __forceinline__ float applyUnary(int op, float x) {
  switch (op) {
    case U_NEG: return -x;
    case U_EXP: return expf(x);
    case U_LOG: return logf(x);
    case U_SQRT: return sqrtf(x);
    case U_RSQRT: return 1.0f / sqrtf(x);
    case U_ABS: return fabsf(x);
    case U_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case U_SILU: return x / (1.0f + expf(-x));
    case U_RELU: return x > 0.f ? x : 0.f;
    case U_TANH: return tanhf(x);
    case U_RECIP: return 1.0f / x;
    case U_SQUARE: return x * x;
    default: return x > 0.f ? 1.f : (x < 0.f ? -1.f : x);  // sign (keeps ±0 and NaN)
  }
}

__global__ void unaryKernel(int op, const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = applyUnary(op, x[i]);
}

__device__ __forceinline__ float applyBinary(int op, float a, float b) {
  switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_MAX: return (a != a || b != b) ? NAN : fmaxf(a, b);  // Math.max propagates NaN
    case B_MIN: return (a != a || b != b) ? NAN : fminf(a, b);
    case B_POW: return powf(a, b);
    case B_EQ: return a == b ? 1.f : 0.f;
    case B_GT: return a > b ? 1.f : 0.f;
    default: return a < b ? 1.f : 0.f;
  }
}

__global__ void binaryKernel(int op, const float* a, View av, const float* b, View bv, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = applyBinary(op, a[stridedOffset(av, i)], b[stridedOffset(bv, i)]);
}

// One warp per output element (outer, inner); lanes stride over the reduced axis. Sequential
// order differs from the reference's left-to-right sum: results agree to float rounding.
__global__ void reduceKernel(int op, const float* __restrict__ x, int64_t outer, int64_t size, int64_t inner,
                             float* __restrict__ out) {
  const int64_t warpsTotal = outer * inner;
  const int lane = threadIdx.x & 31;
  for (int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; w < warpsTotal;
       w += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int64_t o = w / inner, in = w % inner;
    const float* base = x + o * size * inner + in;
    float acc = op == R_SUM ? 0.f : (op == R_MAX ? -INFINITY : INFINITY);
    bool nan = false;
    for (int64_t j = lane; j < size; j += 32) {
      const float v = base[j * inner];
      nan |= v != v;
      acc = op == R_SUM ? acc + v : (op == R_MAX ? fmaxf(acc, v) : fminf(acc, v));
    }
    acc = op == R_SUM ? warpSum(acc) : (op == R_MAX ? warpMax(acc) : -warpMax(-acc));
    nan = __any_sync(0xffffffffu, nan);
    if (lane == 0) out[w] = nan ? NAN : acc;
  }
}

int64_t numel(const View& v) {
  int64_t n = 1;
  for (int d = 0; d < v.rank; ++d) n *= v.shape[d];
  return n;
}

void checkView(const View& v, const char* what) {
  require(v.rank >= 0 && v.rank <= kMaxRank, std::string(what) + ": rank must be in [0, 8]");
  for (int d = 0; d < v.rank; ++d) require(v.shape[d] >= 0, std::string(what) + ": negative extent");
}

}  // namespace

void fill(cudaStream_t s, void* out, int dtype, int64_t n, double value) {
  require(dtypeSize(dtype) > 0, "fill: unknown dtype");
  if (n <= 0) return;
  fillKernel<<<gridFor(n, 256), 256, 0, s>>>(out, dtype, n, static_cast<float>(value), static_cast<int32_t>(value));
  QK_LAUNCH_CHECK("fillKernel");
}

void copyStrided(cudaStream_t s, const void* src, int srcDtype, const View& view, void* dst, int dstDtype) {
  checkView(view, "copy");
  require(dtypeSize(srcDtype) > 0 && dtypeSize(dstDtype) > 0, "copy: unknown dtype");
  const int64_t n = numel(view);
  if (n == 0) return;
  copyKernel<<<gridFor(n, 256), 256, 0, s>>>(src, srcDtype, view, n, dst, dstDtype);
  QK_LAUNCH_CHECK("copyKernel");
}

void copyInPlace(cudaStream_t s, void* dst, int dstDtype, const View& dstView, const void* src, int srcDtype, const View& srcView) {
  checkView(dstView, "copyInPlace dst");
  checkView(srcView, "copyInPlace src");
  require(dtypeSize(srcDtype) > 0 && dtypeSize(dstDtype) > 0, "copyInPlace: unknown dtype");
  require(dstView.rank == srcView.rank, "copyInPlace: views must have the same rank");
  for (int d = 0; d < dstView.rank; ++d) require(dstView.shape[d] == srcView.shape[d], "copyInPlace: view shapes differ");
  const int64_t n = numel(srcView);
  if (n == 0) return;
  scatterKernel<<<gridFor(n, 256), 256, 0, s>>>(dst, dstDtype, dstView, src, srcDtype, srcView, n);
  QK_LAUNCH_CHECK("scatterKernel");
}

void unary(cudaStream_t s, int op, const float* x, float* y, int64_t n) {
  require(op >= U_NEG && op <= U_SIGN, "unary: unknown op");
  if (n <= 0) return;
  unaryKernel<<<gridFor(n, 256), 256, 0, s>>>(op, x, y, n);
  QK_LAUNCH_CHECK("unaryKernel");
}

void binary(cudaStream_t s, int op, const float* a, const View& aView, const float* b, const View& bView, float* out) {
  checkView(aView, "binary a");
  checkView(bView, "binary b");
  require(op >= B_ADD && op <= B_LT, "binary: unknown op");
  require(aView.rank == bView.rank, "binary: views must have the same rank");
  for (int d = 0; d < aView.rank; ++d) require(aView.shape[d] == bView.shape[d], "binary: view shapes differ");
  const int64_t n = numel(aView);
  if (n == 0) return;
  binaryKernel<<<gridFor(n, 256), 256, 0, s>>>(op, a, aView, b, bView, out, n);
  QK_LAUNCH_CHECK("binaryKernel");
}

void reduce(cudaStream_t s, int op, const float* x, int64_t outer, int64_t size, int64_t inner, float* out) {
  require(op >= R_SUM && op <= R_MIN, "reduce: unknown op");
  require(outer >= 0 && size >= 0 && inner >= 0, "reduce: negative extent");
  const int64_t outputs = outer * inner;
  if (outputs == 0) return;
  reduceKernel<<<gridFor(outputs * 32, 256), 256, 0, s>>>(op, x, outer, size, inner, out);
  QK_LAUNCH_CHECK("reduceKernel");
}

}  // namespace qk
