// Device-side helpers shared by the kernel files. Compiled WITHOUT --use_fast_math: IEEE division,
// reciprocal and no flush-to-zero, so results match the host references bit for bit where the
// references are exact (NF4 quantization) and to float rounding elsewhere.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../runtime/check.h"
#include "../runtime/dtype.h"

namespace qk {

constexpr unsigned kMaxGrid = 65535u * 16u;  // grid-stride loops cap the grid well below 2^31-1

inline unsigned gridFor(size_t n, unsigned block) {
  size_t g = (n + block - 1) / block;
  if (g == 0) g = 1;
  return g > kMaxGrid ? kMaxGrid : static_cast<unsigned>(g);
}

__device__ __forceinline__ float bf16ToFloat(uint16_t bits) { return __uint_as_float(uint32_t(bits) << 16); }

// Round-to-nearest-even; NaN keeps its payload and is made quiet — the exact bit rule of the
// reference backend's f32ToBf16Bits (the hardware cvt would canonicalise NaN to 0x7fff).
__device__ __forceinline__ uint16_t floatToBf16(float f) {
  const uint32_t b = __float_as_uint(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b >> 16) | 0x40u);
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float f16ToFloat(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
__device__ __forceinline__ uint16_t floatToF16(float f) { return __half_as_ushort(__float2half_rn(f)); }

/** Loads element i of a buffer of the given dtype as float. */
__device__ __forceinline__ float loadAs(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case F32: return static_cast<const float*>(p)[i];
    case F16: return f16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case BF16: return bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case I32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    default: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
  }
}

__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/** Block-wide sum; `scratch` holds 32 floats; every thread gets the result. blockDim % 32 == 0. */
__device__ __forceinline__ float blockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return warpSum(v);
}
__device__ __forceinline__ float blockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warpMax(v);
}

}  // namespace qk
