// Fused NF4/FP4 dequant + tensor-core GEMM (training shapes) and a GEMV for m == 1.
// The 4-bit weight W [n, k] is dequantized tile by tile into shared memory (never whole), each
// element as bf16(fl32(LUT[c] · absmax)) — exactly dequantize4bit(..., bf16) — then multiplied
// on bf16 tensor cores with f32 accumulation. Reference: dequantize4bit → bf16 → dense GEMM
// (dev/gpu_check.cu checkGemm4bit, dev/check_gemm_pipeline.cu). Three paths, see Gemm4bitPath in
// kernels.h: legacy (synchronous WMMA), fused (the cp.async pipeline of gemm_pipe.cuh with the Nf4Op
// operand below) and dequant-cublas (bounded bf16 panels + cuBLAS). Pipelined paths compiled, unverified.
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "../runtime/cublas_dyn.h"
#include "../runtime/device.h"
#include "common.cuh"
#include "gemm_pipe.cuh"
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

// ------------------------------------------------------------------ pipelined fused path

// The code table of the weight being multiplied (filled by Nf4Op::init before the first barrier).
__shared__ float sLut[16];

/** B operand of the pipelined kernel from a 4-bit W [N, K] (K % 32 == 0, codes 16-byte aligned).
 * kTrans == false (forward, y = x·Wᵀ): tile rows = W rows (n), reduction = W columns.
 * kTrans == true (input grad, dx = dy·W): tile rows = W columns, reduction = W rows.
 * A stage holds the raw codes (2 KB, cp.async 16 B) and one resolved f32 scale per 16 codes (1 KB,
 * cp.async 4 B): blocksize ≥ 16 and 16-aligned groups never straddle an absmax block. `prepare`
 * dequantizes one stage into a bf16 tile (each thread 16 codes → two 16-byte stores) that the
 * ldmatrix fragment loads then read like a dense tile: the dequant runs once per element per block
 * instead of once per warp that reads it, at the cost of the prepare step (hidden one tile ahead). */
template <bool kTrans>
struct Nf4Op {
  const uint8_t* codes;
  const float* scales;  // f32 absmax per quantization block (double quant resolved beforehand)
  int N, K, log2Bs;
  bool fp4;
  static constexpr int kCodeBytes = 2048, kScaleBytes = 1024;
  static constexpr int kStageBytes = kCodeBytes + kScaleBytes;
  static constexpr bool kPrepare = true;
  static constexpr bool kFragKMajor = !kTrans;
  static constexpr int kDeqBytes = kTrans ? pipe::kMNMajorBytes : pipe::kKMajorBytes;

  __device__ __forceinline__ void init() const {
    if (threadIdx.x < 16) sLut[threadIdx.x] = __uint_as_float(fp4 ? kFp4Bits[threadIdx.x] : kNf4Bits[threadIdx.x]);
  }
  // r0: first output index of the tile (W row forward, W column transposed); k0: first reduction index.
  __device__ __forceinline__ void load(char* stage, int /*batch*/, int r0, int k0) const {
    uint8_t* sc = reinterpret_cast<uint8_t*>(stage);
    float* ss = reinterpret_cast<float*>(stage + kCodeBytes);
    const int t = threadIdx.x;
    if (!kTrans) {
      if (t < 128) {  // W row r0 + t, columns k0 .. k0 + 31: 16 bytes
        const int n = r0 + t;
        const bool ok = n < N;
        pipe::cpAsync16(sc + t * 16, ok ? codes + (int64_t(n) * K + k0) / 2 : codes, ok);
      }
      const int n = r0 + (t >> 1);  // scale of row t/2, columns k0 + 16·(t%2) ..
      const bool ok = n < N;
      pipe::cpAsync4(ss + t, ok ? scales + ((int64_t(n) * K + k0 + 16 * (t & 1)) >> log2Bs) : scales, ok);
    } else {
      if (t < 128) {  // W row k0 + t/4, columns r0 + 32·(t%4) .. +31: 16 bytes at sc + (t/4)·64 + (t%4)·16
        const int wr = k0 + (t >> 2), wc = r0 + 32 * (t & 3);
        const bool ok = wr < N && wc < K;
        pipe::cpAsync16(sc + t * 16, ok ? codes + (int64_t(wr) * K + wc) / 2 : codes, ok);
      }
      const int wr = k0 + (t >> 3), wc = r0 + 16 * (t & 7);  // scale of W row k0 + t/8, columns r0 + 16·(t%8) ..
      const bool ok = wr < N && wc < K;
      pipe::cpAsync4(ss + t, ok ? scales + ((int64_t(wr) * K + wc) >> log2Bs) : scales, ok);
    }
  }
  // Zero-filled codes (out of range) have zero scales, so they dequantize to ±0.
  __device__ __forceinline__ void prepare(const char* stage, uint16_t* deq) const {
    const int t = threadIdx.x;
    const uint2 packed = *reinterpret_cast<const uint2*>(stage + t * 8);  // the same 16 codes in both layouts
    const float scale = reinterpret_cast<const float*>(stage + kCodeBytes)[t];
    uint16_t* dst = kTrans ? deq + (t >> 3) * pipe::LDMN + (t & 7) * 16 : deq + (t >> 1) * pipe::LDK + (t & 1) * 16;
    uint32_t words[8];
#pragma unroll
    for (int b = 0; b < 8; ++b) {  // element 2j is the high nibble; it goes to the lower address
      const uint32_t byte = ((b < 4 ? packed.x : packed.y) >> (8 * (b & 3))) & 0xffu;
      const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(__fmul_rn(sLut[byte >> 4], scale)));
      const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(__fmul_rn(sLut[byte & 15], scale)));
      words[b] = lo | (hi << 16);
    }
    reinterpret_cast<uint4*>(dst)[0] = make_uint4(words[0], words[1], words[2], words[3]);
    reinterpret_cast<uint4*>(dst)[1] = make_uint4(words[4], words[5], words[6], words[7]);
  }
};

__global__ void resolveAbsmaxKernel(Absmax4bit a, int64_t blocks, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < blocks; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = absmaxOf(a, i);
}

/** Device scratch from the caching allocator, released in compute-stream order (as embedding.cu does). */
struct Scratch {
  cudaStream_t s;
  void* p = nullptr;
  Scratch(cudaStream_t stream, size_t bytes) : s(stream) { p = Runtime::get().allocate(bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    Runtime& rt = Runtime::get();
    if (s != rt.compute()) cudaStreamSynchronize(s);  // a destructor must not throw; a fault resurfaces at the next checked call
    rt.release(p);
  }
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

/** The activation as an aligned bf16 [rows, cols] buffer: x itself, or a converted copy in `hold`. */
const uint16_t* bf16Input(cudaStream_t s, const void* x, int dtype, int64_t count, Scratch*& hold) {
  if (dtype == BF16 && aligned16(x)) return static_cast<const uint16_t*>(x);
  hold = new Scratch(s, size_t(count) * 2);
  View v;
  v.rank = 1;
  v.shape[0] = count;
  v.strides[0] = 1;
  copyStrided(s, x, dtype, v, hold->p, BF16);  // RNE, as the loaders' __float2bfloat16_rn for finite values
  return static_cast<const uint16_t*>(hold->p);
}

bool fusedFits(const Weight4bit& w, bool inputGrad) {
  return w.k % 32 == 0 && aligned16(w.codes) && (!inputGrad || w.n % 8 == 0);
}

/** Rows per dequant panel: the whole W when its copy (elemBytes per element) fits kGemm4bitPanelBytes,
 * else the largest multiple of `unit` rows that fits, where a panel of `unit` rows starts on a 16-element
 * boundary (8-byte aligned codes) and on a whole absmax block (and nested block with double quant), so
 * the panel is a plain dequantize4bit of a sub-range. 0: no such panel within the bound. */
int64_t panelRows(const Weight4bit& w, int elemBytes = 2) {
  const int64_t k = w.k;
  if (int64_t(w.n) * k * elemBytes <= kGemm4bitPanelBytes) return w.n;
  int64_t align = w.blocksize;
  if (!w.absmax.absmax) align *= w.absmax.nestedBlocksize;
  align = std::lcm(align, int64_t(16));
  const int64_t unit = align / std::gcd(align, k);
  const int64_t maxRows = kGemm4bitPanelBytes / (elemBytes * k);
  return unit > maxRows ? 0 : maxRows / unit * unit;
}

bool gemm4bitEnv(const char* value) {
  static const char* env = std::getenv("QLORA_CUDA_GEMM4BIT");
  return env != nullptr && std::strcmp(env, value) == 0;
}

template <bool kTrans, bool kOutBf16>
void launchFused(cudaStream_t s, const uint16_t* xb, int M, const Weight4bit& w, const float* scales, void* out) {
  const int Nout = kTrans ? w.k : w.n, Kred = kTrans ? w.n : w.k;
  const pipe::DenseOp<true> a{xb, M, Kred, Kred, 0};
  const Nf4Op<kTrans> b{w.codes, scales, w.n, w.k, log2i(w.blocksize), w.fp4};
  pipe::launch<pipe::DenseOp<true>, Nf4Op<kTrans>, kOutBf16>(s, a, b, out, M, Nout, Kred, 1);
}

template <bool kTrans>
void runFused(cudaStream_t s, const uint16_t* xb, int M, const Weight4bit& w, void* out, bool outBf16) {
  const float* scales = w.absmax.absmax;
  Scratch* resolved = nullptr;
  if (!scales) {  // double quant: resolve once (n·k/blocksize floats) so the kernel streams plain f32 scales
    const int64_t blocks = (int64_t(w.n) * w.k + w.blocksize - 1) / w.blocksize;
    resolved = new Scratch(s, size_t(blocks) * 4);
    resolveAbsmaxKernel<<<gridFor(size_t(blocks), 256), 256, 0, s>>>(w.absmax, blocks, static_cast<float*>(resolved->p));
    QK_LAUNCH_CHECK("resolveAbsmaxKernel");
    scales = static_cast<const float*>(resolved->p);
  }
  try {
    if (outBf16) launchFused<kTrans, true>(s, xb, M, w, scales, out);
    else launchFused<kTrans, false>(s, xb, M, w, scales, out);
  } catch (...) {
    delete resolved;
    throw;
  }
  delete resolved;
}

/** bitsandbytes' training path: W → bf16 panel (one dequantize4bit launch, double quant included)
 * → cuBLAS bf16 GEMM with f32 accumulation. Forward panels fill column ranges of y (ldc = n); input
 * grad panels accumulate (beta = 1) over the reduction axis. Scratch ≤ kGemm4bitPanelBytes.
 * kF32: the same with an f32 panel, f32 x and y (the exact-f32 path with cuBLAS SGEMM). */
template <bool kTrans, bool kF32 = false>
void runDequantCublas(cudaStream_t s, const void* xin, int M, const Weight4bit& w, void* out, int outDtype) {
  constexpr int kElem = kF32 ? 4 : 2;
  const int itype = kF32 ? cublas::R_32F : cublas::R_16BF;
  const int64_t rowsPer = panelRows(w, kElem), k = w.k;
  require(rowsPer > 0, "gemm4bit: no dequant panel fits the scratch bound");
  Scratch panel(s, size_t(std::min<int64_t>(rowsPer, w.n)) * k * kElem);
  const int ctype = outDtype == BF16 ? cublas::R_16BF : cublas::R_32F;
  for (int64_t p0 = 0; p0 < w.n; p0 += rowsPer) {
    const int rows = int(std::min<int64_t>(rowsPer, w.n - p0));
    const int64_t e0 = p0 * k, block0 = e0 / w.blocksize;
    Absmax4bit a = w.absmax;
    if (a.absmax) a.absmax += block0;
    else {
      a.qabsmax += block0;
      a.nestedAbsmax += block0 / a.nestedBlocksize;
    }
    dequantize4bit(s, w.codes + e0 / 2, int64_t(rows) * k, w.blocksize, w.fp4, a, panel.p, kF32 ? F32 : BF16);
    const size_t outBytes = outDtype == BF16 ? 2 : 4;
    if (!kTrans)  // column-major yᵀ[n, m]: rows p0.. of it = Wpanel[rows, k] · xᵀ
      cublasGemmStridedBatched(s, cublas::OP_T, cublas::OP_N, rows, M, w.k, panel.p, itype, w.k, 0, xin, itype, w.k, 0,
                               static_cast<char*>(out) + p0 * outBytes, ctype, w.n, 0, 1, cublas::COMPUTE_32F);
    else  // column-major dxᵀ[k, m] (+)= Wpanelᵀ[k, rows] · dyᵀ[p0.., m]
      cublasGemmStridedBatched(s, cublas::OP_N, cublas::OP_N, w.k, M, rows, panel.p, itype, w.k, 0,
                               static_cast<const char*>(xin) + p0 * kElem, itype, w.n, 0, out, ctype, w.k, 0, 1,
                               cublas::COMPUTE_32F, p0 == 0 ? 0.f : 1.f);
  }
}

template <bool kTrans>
void run4bitPath(cudaStream_t s, const void* x, int xDtype, int m, const Weight4bit& w, void* y, int yDtype, int path) {
  if (path == GEMM4BIT_LEGACY) {
    run4bit<kTrans>(s, x, xDtype, m, w, y, yDtype);
    return;
  }
  require(xDtype == F32 || xDtype == BF16, "gemm4bit: input must be f32 or bf16");
  require(yDtype == F32 || yDtype == BF16, "gemm4bit: output must be f32 or bf16");
  require(m >= 1, "gemm4bit: m must be ≥ 1");
  Scratch* hold = nullptr;
  const uint16_t* xb = bf16Input(s, x, xDtype, int64_t(m) * (kTrans ? w.n : w.k), hold);
  try {
    if (path == GEMM4BIT_FUSED) runFused<kTrans>(s, xb, m, w, y, yDtype == BF16);
    else runDequantCublas<kTrans>(s, xb, m, w, y, yDtype);
  } catch (...) {
    delete hold;
    throw;
  }
  delete hold;
}

}  // namespace

int gemm4bitResolvePath(int path, int m, const Weight4bit& w, bool inputGrad, int outDtype) {
  int p = path;
  if (p == GEMM4BIT_AUTO) {
    if (gemm4bitEnv("fused")) p = GEMM4BIT_FUSED;
    else if (gemm4bitEnv("dequant-cublas")) p = GEMM4BIT_DEQUANT_CUBLAS;
    else p = m >= kGemm4bitCublasMinM && cublasUsable() ? GEMM4BIT_DEQUANT_CUBLAS : GEMM4BIT_FUSED;
  }
  if (p == GEMM4BIT_DEQUANT_CUBLAS) {
    const int64_t rows = panelRows(w);
    // bf16 dx over several panels would accumulate in bf16: keep that on the fused kernel.
    if (!cublasUsable() || rows == 0 || (inputGrad && outDtype == BF16 && rows < w.n)) p = GEMM4BIT_FUSED;
  }
  if (p == GEMM4BIT_FUSED && path == GEMM4BIT_AUTO && legacyGemmFromEnv()) p = GEMM4BIT_LEGACY;
  if (p == GEMM4BIT_FUSED && !fusedFits(w, inputGrad)) p = GEMM4BIT_LEGACY;
  return p;
}

void gemm4bitF32(cudaStream_t s, const float* x, int m, const Weight4bit& w, float* y, bool inputGrad, int path) {
  checkWeight(w, "gemm4bitF32");
  require(m >= 1, "gemm4bitF32: m must be ≥ 1");
  const bool cublasPanels = path == 1 || (path == -1 && cublasUsable() && panelRows(w, 4) > 0);
  if (!cublasPanels) {
    gemm4bitF32Simt(s, x, m, w, y, inputGrad);
    return;
  }
  if (inputGrad) runDequantCublas<true, true>(s, x, m, w, y, F32);
  else runDequantCublas<false, true>(s, x, m, w, y, F32);
}

void gemm4bit(cudaStream_t s, const void* x, int xDtype, int m, const Weight4bit& w, void* y, int yDtype, int path) {
  checkWeight(w, "gemm4bit");
  require(m >= 1, "gemm4bit: m must be ≥ 1");
  const int p = gemm4bitResolvePath(path, m, w, false, yDtype);
  if (m == 1 && p != GEMM4BIT_DEQUANT_CUBLAS) {
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
  run4bitPath<false>(s, x, xDtype, m, w, y, yDtype, p);
}

void gemm4bitInputGrad(cudaStream_t s, const void* dy, int dyDtype, int m, const Weight4bit& w, void* dx, int dxDtype,
                       int path) {
  checkWeight(w, "gemm4bitInputGrad");
  require(m >= 1, "gemm4bitInputGrad: m must be ≥ 1");
  run4bitPath<true>(s, dy, dyDtype, m, w, dx, dxDtype, gemm4bitResolvePath(path, m, w, true, dxDtype));
}

}  // namespace qk
