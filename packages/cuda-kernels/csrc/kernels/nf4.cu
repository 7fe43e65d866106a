// bitsandbytes NF4/FP4 quantize + dequantize (with double quant in the same launch) and the 8-bit
// blockwise quantizer used for double quant. References: @qlora/nf4 (bit-exact for quantize:
// IEEE reciprocal __frcp_rn, float32 threshold literals, no FTZ) and spec Appendix B vectors.
#include <cfloat>

#include "common.cuh"
#include "kernels.h"
#include "nf4_tables.cuh"

namespace qk {
namespace {

constexpr int kQuantThreads = 128;

// One CUDA block per quantization block: block max of |x| (fmaxf from -FLT_MAX ignores NaN, keeps
// Inf, spec §2.2), then each thread packs byte pairs. Blocksize is even, so a byte never straddles
// two quantization blocks; the odd tail's padding element is 0 (spec §2.3).
template <bool kFp4>
__global__ void quantize4bitKernel(const void* __restrict__ x, int dtype, int64_t n, int blocksize,
                                   uint8_t* __restrict__ codes, float* __restrict__ absmax) {
  __shared__ float scratch[32];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blocksize;
  const int64_t end = min(start + blocksize, n);
  float m = -FLT_MAX;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) m = fmaxf(m, fabsf(loadAs(x, dtype, i)));
  m = blockMax(m, scratch);
  if (threadIdx.x == 0) absmax[blockIdx.x] = m;
  const float r = __frcp_rn(m);  // IEEE round-to-nearest 1/absmax (bitsandbytes uses the fast-math approximation)
  const int64_t pairs = (end - start + 1) / 2;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t i = start + 2 * p;
    const float y0 = __fmul_rn(loadAs(x, dtype, i), r);
    const float y1 = __fmul_rn(i + 1 < n ? loadAs(x, dtype, i + 1) : 0.f, r);
    const uint8_t c0 = kFp4 ? quantizeFp4(y0) : quantizeNf4(y0);
    const uint8_t c1 = kFp4 ? quantizeFp4(y1) : quantizeNf4(y1);
    codes[i / 2] = static_cast<uint8_t>((c0 << 4) | c1);
  }
}

__device__ __forceinline__ float blockAbsmax(const Absmax4bit& a, int64_t block) {
  if (a.absmax) return a.absmax[block];
  // Two roundings, as torch does (spec §5.4): fl32(fl32(code[q] · nested) + offset).
  const float scaled = __fmul_rn(a.code[a.qabsmax[block]], a.nestedAbsmax[block / a.nestedBlocksize]);
  return __fadd_rn(scaled, a.offset);
}

template <typename Out>
__device__ __forceinline__ Out convertOut(float v);
template <>
__device__ __forceinline__ float convertOut<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 convertOut<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half convertOut<__half>(float v) { return __float2half_rn(v); }

// Each thread: 8 packed bytes (one 8-byte load) → 16 outputs sharing one absmax (blocksize ≥ 16).
// Outputs are written as 16-byte vectors when the whole group is in range; the tail is scalar.
template <typename Out, bool kFp4>
__global__ void dequantize4bitKernel(const uint8_t* __restrict__ codes, int64_t n, int log2Blocksize, Absmax4bit a,
                                     Out* __restrict__ out) {
  // Divergent lookups into __constant__ memory serialise; a shared copy does not.
  __shared__ uint32_t lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = kFp4 ? kFp4Bits[threadIdx.x] : kNf4Bits[threadIdx.x];
  __syncthreads();
  const int64_t groups = (n + 15) / 16;
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e0 = g * 16;
    const float scale = blockAbsmax(a, e0 >> log2Blocksize);
    if (e0 + 16 <= n) {
      const uint2 packed = reinterpret_cast<const uint2*>(codes)[g];
      alignas(16) Out vals[16];
#pragma unroll
      for (int b = 0; b < 8; ++b) {
        const uint32_t word = b < 4 ? packed.x : packed.y;
        const uint32_t byte = (word >> (8 * (b & 3))) & 0xffu;
        vals[2 * b] = convertOut<Out>(__fmul_rn(__uint_as_float(lut[byte >> 4]), scale));
        vals[2 * b + 1] = convertOut<Out>(__fmul_rn(__uint_as_float(lut[byte & 15]), scale));
      }
      uint4* dst = reinterpret_cast<uint4*>(out + e0);
      constexpr int kVec = sizeof(Out) * 16 / sizeof(uint4);
#pragma unroll
      for (int v = 0; v < kVec; ++v) dst[v] = reinterpret_cast<const uint4*>(vals)[v];
    } else {
      for (int64_t e = e0; e < n; ++e) {
        const uint8_t byte = codes[e >> 1];
        const uint8_t c = (e & 1) ? (byte & 15) : (byte >> 4);
        out[e] = convertOut<Out>(__fmul_rn(__uint_as_float(lut[c]), scale));
      }
    }
  }
}

// 8-bit blockwise quantize, bitsandbytes' binary search (spec §5.2): nearest code, ties to even index.
__device__ __forceinline__ uint8_t quantizeDynamic(const float* c, float y) {
  int pivot = 127, lo = 0, hi = 255;
  float lower = -1.f, upper = 1.f, val = c[127];
  for (int step = 64; step >= 1; step >>= 1) {
    if (y > val) {
      lo = pivot;
      lower = val;
      pivot += step;
    } else {
      hi = pivot;
      upper = val;
      pivot -= step;
    }
    val = c[pivot];
  }
  if (hi == 255) upper = c[255];
  if (lo == 0) lower = c[0];
  if (y > val) return static_cast<uint8_t>(y > __fmul_rn(__fadd_rn(upper, val), 0.5f) ? hi : pivot);
  return static_cast<uint8_t>(y < __fmul_rn(__fadd_rn(lower, val), 0.5f) ? lo : pivot);
}

__global__ void quantizeBlockwise8Kernel(const float* __restrict__ x, int64_t n, float offset, int blocksize,
                                         const float* __restrict__ code, uint8_t* __restrict__ q,
                                         float* __restrict__ absmax) {
  __shared__ float scratch[32];
  __shared__ float table[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) table[i] = code[i];
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blocksize;
  const int64_t end = min(start + blocksize, n);
  float m = -FLT_MAX;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) m = fmaxf(m, fabsf(__fsub_rn(x[i], offset)));
  m = blockMax(m, scratch);  // also orders the table load before use
  if (threadIdx.x == 0) absmax[blockIdx.x] = m;
  const float r = __frcp_rn(m);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x)
    q[i] = quantizeDynamic(table, __fmul_rn(__fsub_rn(x[i], offset), r));
}

bool isPow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }
int log2i(int64_t v) {
  int l = 0;
  while ((int64_t(1) << l) < v) ++l;
  return l;
}

}  // namespace

void quantize4bit(cudaStream_t s, const void* x, int dtype, int64_t n, int blocksize, bool fp4, uint8_t* codes,
                  float* absmax) {
  require(dtype == F32 || dtype == BF16 || dtype == F16, "quantize4bit: x must be f32, bf16 or f16");
  require(isPow2(blocksize) && blocksize >= 16 && blocksize <= 4096, "quantize4bit: blocksize must be a power of two in [16, 4096]");
  require(n > 0 && n <= INT32_MAX, "quantize4bit: n must be in [1, 2^31-1]");
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  require(blocks <= INT32_MAX, "quantize4bit: too many blocks");
  if (fp4)
    quantize4bitKernel<true><<<unsigned(blocks), kQuantThreads, 0, s>>>(x, dtype, n, blocksize, codes, absmax);
  else
    quantize4bitKernel<false><<<unsigned(blocks), kQuantThreads, 0, s>>>(x, dtype, n, blocksize, codes, absmax);
  QK_LAUNCH_CHECK("quantize4bitKernel");
}

void dequantize4bit(cudaStream_t s, const uint8_t* codes, int64_t n, int blocksize, bool fp4, const Absmax4bit& a,
                    void* out, int outDtype) {
  require(isPow2(blocksize) && blocksize >= 16 && blocksize <= 4096, "dequantize4bit: blocksize must be a power of two in [16, 4096]");
  require(n > 0, "dequantize4bit: n must be positive");
  require(a.absmax || (a.qabsmax && a.code && a.nestedAbsmax && a.nestedBlocksize > 0),
          "dequantize4bit: need absmax, or qabsmax + code + nestedAbsmax");
  require((reinterpret_cast<uintptr_t>(codes) & 7) == 0 && (reinterpret_cast<uintptr_t>(out) & 15) == 0,
          "dequantize4bit: codes must be 8-byte and out 16-byte aligned (allocator blocks are)");
  const int lg = log2i(blocksize);
  const unsigned threads = 256, grid = gridFor((n + 15) / 16, threads);
#define QK_DEQ(T)                                                                                           \
  (fp4 ? dequantize4bitKernel<T, true><<<grid, threads, 0, s>>>(codes, n, lg, a, static_cast<T*>(out))     \
       : dequantize4bitKernel<T, false><<<grid, threads, 0, s>>>(codes, n, lg, a, static_cast<T*>(out)))
  switch (outDtype) {
    case F32: QK_DEQ(float); break;
    case BF16: QK_DEQ(__nv_bfloat16); break;
    case F16: QK_DEQ(__half); break;
    default: require(false, "dequantize4bit: out must be f32, bf16 or f16");
  }
#undef QK_DEQ
  QK_LAUNCH_CHECK("dequantize4bitKernel");
}

void quantizeBlockwise8(cudaStream_t s, const float* x, int64_t n, float offset, int blocksize, const float* code,
                        uint8_t* q, float* absmax) {
  require(isPow2(blocksize) && blocksize >= 64 && blocksize <= 4096, "quantizeBlockwise8: blocksize must be a power of two in [64, 4096]");
  require(n > 0 && n <= INT32_MAX, "quantizeBlockwise8: n must be in [1, 2^31-1]");
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  quantizeBlockwise8Kernel<<<unsigned(blocks), 256, 0, s>>>(x, n, offset, blocksize, code, q, absmax);
  QK_LAUNCH_CHECK("quantizeBlockwise8Kernel");
}

}  // namespace qk
