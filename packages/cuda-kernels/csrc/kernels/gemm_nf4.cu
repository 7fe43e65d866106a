// Fused NF4/FP4 dequant + tensor-core GEMM (training shapes) and a GEMV for m == 1.
// The 4-bit weight W [n, k] is dequantized tile by tile into shared memory (never whole), each
// element as bf16(fl32(LUT[c] · absmax)) — exactly dequantize4bit(..., bf16) — then multiplied
// on bf16 tensor cores with f32 accumulation. Reference: dequantize4bit → bf16 → dense GEMM.
#include "common.cuh"
#include "gemm_tc.cuh"
#include "kernels.h"
#include "nf4_tables.cuh"

namespace qk {
namespace {

__device__ __forceinline__ float absmaxOf(const Absmax4bit& a, int64_t block) {
  if (a.absmax) return a.absmax[block];
  return __fadd_rn(__fmul_rn(a.code[a.qabsmax[block]], a.nestedAbsmax[block / a.nestedBlocksize]), a.offset);
}

// The 16-entry code table of the weight being multiplied, per block (filled by Nf4Loader::init).
__shared__ float gLut[16];

/** Tile loader for W. kTrans == false: tile rows = n (output features), cols = k (forward, y = x·Wᵀ).
 * kTrans == true: tile rows = k (output of dx = dy·W), cols = n (the reduction axis).
 * kFast: K % 16 == 0, so 16 consecutive codes are 8 aligned bytes in one absmax block; fetch keeps
 * the raw bytes + scale in registers, commit dequantizes into the shared tile. */
template <bool kTrans, bool kFast>
struct Nf4Loader {
  const uint8_t* codes;
  Absmax4bit a;
  int N, K, log2Blocksize;
  bool fp4;
  struct Regs {
    uint2 packed;
    float scale;
    float v[kFast ? 1 : tc::kPerThread];
  };
  __device__ __forceinline__ void init() const {
    if (threadIdx.x < 16) gLut[threadIdx.x] = __uint_as_float(fp4 ? kFp4Bits[threadIdx.x] : kNf4Bits[threadIdx.x]);
  }
  // Fast path geometry: 128 × 32 tile = 256 groups of 16 consecutive W elements, one per thread.
  // Forward: W rows are tile rows (n), the 32 columns are k. Transposed: 32 W rows (the reduction
  // axis, tile cols) × 128 W columns (tile rows).
  __device__ __forceinline__ void fastCoords(int r0, int c0, int& wr, int& wc) const {
    const int t = threadIdx.x;
    if (!kTrans) { wr = r0 + t / 2; wc = c0 + (t % 2) * 16; }
    else { wr = c0 + t / 8; wc = r0 + (t % 8) * 16; }
  }
  __device__ __forceinline__ void slowCoords(int e, int r0, int c0, int& tr, int& tcol, int& wr, int& wc) const {
    if (!kTrans) { tr = e / tc::BK; tcol = e % tc::BK; wr = r0 + tr; wc = c0 + tcol; }
    else { tr = e % tc::BN; tcol = e / tc::BN; wr = c0 + tcol; wc = r0 + tr; }
  }
  __device__ __forceinline__ void fetch(Regs& regs, int /*batch*/, int r0, int c0) const {
    if (kFast) {
      int wr, wc;
      fastCoords(r0, c0, wr, wc);
      if (wr < N && wc < K) {
        const int64_t e0 = static_cast<int64_t>(wr) * K + wc;
        regs.packed = *reinterpret_cast<const uint2*>(codes + e0 / 2);
        regs.scale = absmaxOf(a, e0 >> log2Blocksize);
      } else {
        regs.packed = make_uint2(0x77777777u, 0x77777777u);  // NF4 code 7 = 0.0 (and FP4 7 · 0 = 0)
        regs.scale = 0.f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < tc::kPerThread; ++i) {
        int tr, tcol, wr, wc;
        slowCoords(threadIdx.x + i * tc::THREADS, r0, c0, tr, tcol, wr, wc);
        float v = 0.f;
        if (wr < N && wc < K) {
          const int64_t idx = static_cast<int64_t>(wr) * K + wc;
          const uint8_t byte = codes[idx >> 1];
          v = __fmul_rn(gLut[(idx & 1) ? (byte & 15) : (byte >> 4)], absmaxOf(a, idx >> log2Blocksize));
        }
        regs.v[kFast ? 0 : i] = v;
      }
    }
  }
  __device__ __forceinline__ void commit(__nv_bfloat16* tile, const Regs& regs) const {
    if (kFast) {
      __nv_bfloat16 vals[16];
#pragma unroll
      for (int b = 0; b < 8; ++b) {
        const uint32_t byte = ((b < 4 ? regs.packed.x : regs.packed.y) >> (8 * (b & 3))) & 0xffu;
        vals[2 * b] = __float2bfloat16_rn(__fmul_rn(gLut[byte >> 4], regs.scale));
        vals[2 * b + 1] = __float2bfloat16_rn(__fmul_rn(gLut[byte & 15], regs.scale));
      }
      const int t = threadIdx.x;
      if (!kTrans) {
        __nv_bfloat16* dst = tile + (t / 2) * tc::LD + (t % 2) * 16;
#pragma unroll
        for (int i = 0; i < 16; ++i) dst[i] = vals[i];
      } else {
        const int col = t / 8, row = (t % 8) * 16;
#pragma unroll
        for (int i = 0; i < 16; ++i) tile[(row + i) * tc::LD + col] = vals[i];
      }
    } else {
#pragma unroll
      for (int i = 0; i < tc::kPerThread; ++i) {
        int tr, tcol, wr, wc;
        slowCoords(threadIdx.x + i * tc::THREADS, 0, 0, tr, tcol, wr, wc);
        tile[tr * tc::LD + tcol] = __float2bfloat16_rn(regs.v[kFast ? 0 : i]);
      }
    }
  }
};

// GEMV (m == 1): one warp per output feature; lanes read 8 packed bytes (16 codes) per step.
// Same numerics as the GEMM path: x and the dequantized weight rounded to bf16, f32 accumulate.
template <bool kOutBf16>
__global__ void gemv4bitKernel(const void* __restrict__ x, int xDtype, const uint8_t* __restrict__ codes, Absmax4bit a,
                               int N, int K, int log2Blocksize, bool fp4, void* __restrict__ y) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = __uint_as_float(fp4 ? kFp4Bits[threadIdx.x] : kNf4Bits[threadIdx.x]);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= N) return;
  float acc = 0.f;
  const int64_t rowBase = static_cast<int64_t>(row) * K;
  const bool fast = (K % 16) == 0;
  for (int k0 = lane * 16; k0 < K; k0 += 32 * 16) {
    const int64_t e0 = rowBase + k0;
    if (fast) {
      const uint2 packed = *reinterpret_cast<const uint2*>(codes + e0 / 2);
      const float scale = absmaxOf(a, e0 >> log2Blocksize);
#pragma unroll
      for (int b = 0; b < 8; ++b) {
        const uint32_t byte = ((b < 4 ? packed.x : packed.y) >> (8 * (b & 3))) & 0xffu;
        const float w0 = bf16ToFloat(floatToBf16(__fmul_rn(lut[byte >> 4], scale)));
        const float w1 = bf16ToFloat(floatToBf16(__fmul_rn(lut[byte & 15], scale)));
        acc = fmaf(bf16ToFloat(floatToBf16(loadAs(x, xDtype, k0 + 2 * b))), w0, acc);
        acc = fmaf(bf16ToFloat(floatToBf16(loadAs(x, xDtype, k0 + 2 * b + 1))), w1, acc);
      }
    } else {
      for (int i = 0; i < 16 && k0 + i < K; ++i) {
        const int64_t e = e0 + i;
        const uint8_t byte = codes[e >> 1];
        const float w = bf16ToFloat(floatToBf16(__fmul_rn(lut[(e & 1) ? (byte & 15) : (byte >> 4)], absmaxOf(a, e >> log2Blocksize))));
        acc = fmaf(bf16ToFloat(floatToBf16(loadAs(x, xDtype, k0 + i))), w, acc);
      }
    }
  }
  acc = warpSum(acc);
  if (lane == 0) tc::storeOut<kOutBf16>(y, row, acc);
}

int log2i(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

void checkWeight(const Weight4bit& w, const char* what) {
  require(w.codes != nullptr, std::string(what) + ": no codes");
  require(w.n > 0 && w.k > 0 && int64_t(w.n) * w.k <= INT32_MAX, std::string(what) + ": n·k must be in [1, 2^31-1]");
  require(w.blocksize >= 16 && w.blocksize <= 4096 && (w.blocksize & (w.blocksize - 1)) == 0,
          std::string(what) + ": blocksize must be a power of two in [16, 4096]");
  require(w.absmax.absmax || (w.absmax.qabsmax && w.absmax.code && w.absmax.nestedAbsmax && w.absmax.nestedBlocksize > 0),
          std::string(what) + ": need absmax, or qabsmax + code + nestedAbsmax");
  require((reinterpret_cast<uintptr_t>(w.codes) & 7) == 0, std::string(what) + ": codes must be 8-byte aligned");
}

template <class ALoader, class BLoader>
void launchTc(cudaStream_t s, const ALoader& la, const BLoader& lb, void* out, bool outBf16, int M, int N, int K) {
  dim3 grid((N + tc::BN - 1) / tc::BN, (M + tc::BM - 1) / tc::BM, 1);
  require(grid.y <= 65535, "gemm4bit: m too large for the grid");
  if (outBf16) tc::gemmKernel<ALoader, BLoader, true><<<grid, tc::THREADS, 0, s>>>(la, lb, out, M, N, K);
  else tc::gemmKernel<ALoader, BLoader, false><<<grid, tc::THREADS, 0, s>>>(la, lb, out, M, N, K);
  QK_LAUNCH_CHECK("tc::gemmKernel<Nf4Loader>");
}

/** out[M, Nout] = in[M, Kred] · B where B comes from W (trans selects the orientation). */
template <bool kTrans>
void run4bit(cudaStream_t s, const void* in, int inDtype, int M, const Weight4bit& w, void* out, int outDtype) {
  require(inDtype == F32 || inDtype == BF16, "gemm4bit: input must be f32 or bf16");
  require(outDtype == F32 || outDtype == BF16, "gemm4bit: output must be f32 or bf16");
  require(M >= 1, "gemm4bit: m must be ≥ 1");
  const int Nout = kTrans ? w.k : w.n, Kred = kTrans ? w.n : w.k;
  const int lg = log2i(w.blocksize);
  const bool outBf16 = outDtype == BF16;
  const bool fast = w.k % 16 == 0;
  tc::DenseLoader la{in, inDtype, true, M, Kred, 0};
  tc::Bf16VecLoader va{static_cast<const uint16_t*>(in), M, Kred, 0};
  const bool aVec = inDtype == BF16 && Kred % 8 == 0 && (reinterpret_cast<uintptr_t>(in) & 15) == 0;
#define QK_RUN(FAST)                                                                          \
  {                                                                                           \
    Nf4Loader<kTrans, FAST> lb{w.codes, w.absmax, w.n, w.k, lg, w.fp4};                       \
    if (aVec) launchTc(s, va, lb, out, outBf16, M, Nout, Kred);                               \
    else launchTc(s, la, lb, out, outBf16, M, Nout, Kred);                                    \
  }
  if (fast) QK_RUN(true) else QK_RUN(false)
#undef QK_RUN
}

}  // namespace

void gemm4bit(cudaStream_t s, const void* x, int xDtype, int m, const Weight4bit& w, void* y, int yDtype) {
  checkWeight(w, "gemm4bit");
  if (m == 1) {
    require(xDtype == F32 || xDtype == BF16, "gemm4bit: x must be f32 or bf16");
    const int warps = 4;
    const unsigned grid = (w.n + warps - 1) / warps;
    if (yDtype == BF16)
      gemv4bitKernel<true><<<grid, warps * 32, 0, s>>>(x, xDtype, w.codes, w.absmax, w.n, w.k, log2i(w.blocksize), w.fp4, y);
    else {
      require(yDtype == F32, "gemm4bit: y must be f32 or bf16");
      gemv4bitKernel<false><<<grid, warps * 32, 0, s>>>(x, xDtype, w.codes, w.absmax, w.n, w.k, log2i(w.blocksize), w.fp4, y);
    }
    QK_LAUNCH_CHECK("gemv4bitKernel");
    return;
  }
  run4bit<false>(s, x, xDtype, m, w, y, yDtype);
}

void gemm4bitInputGrad(cudaStream_t s, const void* dy, int dyDtype, int m, const Weight4bit& w, void* dx, int dxDtype) {
  checkWeight(w, "gemm4bitInputGrad");
  run4bit<true>(s, dy, dyDtype, m, w, dx, dxDtype);
}

}  // namespace qk
