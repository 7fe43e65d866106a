// Pipelined bf16 tensor-core GEMM core for sm_80+ (C f32/bf16 = A · B, f32 accumulation), shared by
// the dense GEMM (gemm.cu) and the fused NF4 GEMM (gemm_nf4.cu). Compiled, unverified on a GPU.
//
// Why this shape: `mma.sync.m16n8k16` + `ldmatrix` in inline PTX rather than WMMA, because ldmatrix
// (and its .trans form) feeds fragments straight from shared memory in either operand layout — so
// transA / non-transposed B need no scalar transposing loads — and the fragment layout is documented,
// which the NF4 operand and the epilogue rely on. Block tile 128×128×32, 8 warps (2 × 4, 64×32 per
// warp), 4-stage `cp.async.cg` (16-byte) pipeline with one barrier per k-tile. Shared tiles are
// padded instead of swizzled (simpler addressing, same result): a k-major row is 40 bf16 = 80 B and an
// mn-major row 136 bf16 = 272 B, so the 8 row addresses of every ldmatrix 8×8 matrix fall in 8
// distinct 16-byte bank groups (80/16 = 5 and 272/16 = 17 are odd). 4 stages of ≤ 20 KB → ≤ 80 KB of
// dynamic shared memory (cudaFuncSetAttribute), 2 blocks per SM on sm_80/sm_90.
//
// An operand policy (DenseOp below, Nf4Op in gemm_nf4.cu) issues the cp.async copies of one k-tile
// into its stage buffer (`load`); a policy with kPrepare turns the raw stage into a bf16 tile
// (`prepare`, e.g. NF4 dequantization) one k-tile ahead, into one of two extra buffers, so that the
// loop still needs a single barrier per k-tile.
#pragma once
#include "common.cuh"
#include "ptx_sm80.cuh"

namespace qk {
namespace pipe {

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4, THREADS = 256;
constexpr int LDK = BK + 8;   // k-major tile [128][40]: row = m (A) or n (B), 32 k values + pad
constexpr int LDMN = BM + 8;  // mn-major tile [32][136]: row = k, 128 m or n values + pad
constexpr int kKMajorBytes = BM * LDK * 2;    // 10240
constexpr int kMNMajorBytes = BK * LDMN * 2;  // 8704
static_assert(BM == BN, "A and B tiles share one geometry");

using ptx::cpAsync16;
using ptx::cpAsync4;
using ptx::cpAsyncCommit;
using ptx::cpAsyncWait;
using ptx::ldsm4;
using ptx::ldsm4T;
using ptx::mma16816;

/** Dense bf16 operand (A: rows = M; B: rows = N). kKMajor: element (r, k) at r·ld + k, else at k·ld + r.
 * Host-checked: base 16-byte aligned, ld and batchStride multiples of 8, and K (k-major) or rows
 * (mn-major) a multiple of 8 — so every 16-byte chunk is wholly in or out of range. */
template <bool kKMajor>
struct DenseOp {
  const uint16_t* p;
  int rows, K;
  int64_t ld, batchStride;
  static constexpr int kStageBytes = kKMajor ? kKMajorBytes : kMNMajorBytes;
  static constexpr bool kPrepare = false;
  static constexpr bool kFragKMajor = kKMajor;
  static constexpr int kDeqBytes = 0;
  __device__ __forceinline__ void init() const {}
  __device__ __forceinline__ void load(char* stage, int batch, int r0, int k0) const {
    const uint16_t* base = p + batch * batchStride;
    uint16_t* tile = reinterpret_cast<uint16_t*>(stage);
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // 512 chunks of 8 bf16, 2 per thread, consecutive threads along the contiguous axis
      const int c = threadIdx.x + i * THREADS;
      if (kKMajor) {
        const int row = c >> 2, col = (c & 3) * 8;
        const int gr = r0 + row, gk = k0 + col;
        const bool ok = gr < rows && gk < K;
        cpAsync16(tile + row * LDK + col, ok ? base + gr * ld + gk : base, ok);
      } else {
        const int row = c >> 4, col = (c & 15) * 8;
        const int gk = k0 + row, gr = r0 + col;
        const bool ok = gk < K && gr < rows;
        cpAsync16(tile + row * LDMN + col, ok ? base + gk * ld + gr : base, ok);
      }
    }
  }
  __device__ __forceinline__ void prepare(const char*, uint16_t*) const {}
};

/** Blocks walk the tile grid in groups of 8 m-tiles (all n-tiles of the group before the next), so
 * the A panels and B panels in flight stay in L2 (the grouped ordering of Triton's matmul tutorial). */
__device__ __forceinline__ void rasterize(int pid, int tilesM, int tilesN, int& mt, int& nt) {
  constexpr int G = 8;
  const int perGroup = G * tilesN;
  const int group = pid / perGroup;
  const int first = group * G;
  const int size = min(tilesM - first, G);
  const int local = pid - group * perGroup;
  mt = first + local % size;
  nt = local / size;
}

/** One k-tile of MMAs for this warp's 64×32 sub-tile. Fragment layouts (PTX ISA, mma.m16n8k16):
 * ldmatrix lane l addresses row (l % 8) of 8×8 matrix l / 8; matrix q lands in register q. */
template <bool kAKMajor, bool kBKMajor>
__device__ __forceinline__ void mmaTile(const uint16_t* tA, const uint16_t* tB, float (&acc)[4][4][4], int wm, int wn,
                                        int lane) {
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    uint32_t fa[4][4], fb[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // A 16×16: matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15)
      const int mb = wm * 64 + i * 16;
      if (kAKMajor) ldsm4(fa[i], tA + (mb + (lane & 15)) * LDK + kk + (lane >> 4) * 8);
      else ldsm4T(fa[i], tA + (kk + (lane >> 4) * 8 + (lane & 7)) * LDMN + mb + ((lane >> 3) & 1) * 8);
    }
#pragma unroll
    for (int jj = 0; jj < 2; ++jj) {  // B 16×16 = two n8 fragments: (n0-7,k0-7) (n0-7,k8-15) (n8-15,k0-7) (n8-15,k8-15)
      const int nb = wn * 32 + jj * 16;
      uint32_t r[4];
      if (kBKMajor) ldsm4(r, tB + (nb + (lane >> 4) * 8 + (lane & 7)) * LDK + kk + ((lane >> 3) & 1) * 8);
      else ldsm4T(r, tB + (kk + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDMN + nb + (lane >> 4) * 8);
      fb[2 * jj][0] = r[0];
      fb[2 * jj][1] = r[1];
      fb[2 * jj + 1][0] = r[2];
      fb[2 * jj + 1][1] = r[3];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) mma16816(acc[i][j], fa[i], fb[j][0], fb[j][1]);
  }
}

template <bool kOutBf16>
__device__ __forceinline__ void store1(void* c, int64_t idx, float v) {
  if (kOutBf16) static_cast<uint16_t*>(c)[idx] = floatToBf16(v);
  else static_cast<float*>(c)[idx] = v;
}
/** idx even and C 8-byte aligned (allocator blocks are): one 8-byte (f32) or 4-byte (bf16) store. */
template <bool kOutBf16>
__device__ __forceinline__ void store2(void* c, int64_t idx, float v0, float v1) {
  if (kOutBf16)
    *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(c) + idx) = uint32_t(floatToBf16(v0)) | (uint32_t(floatToBf16(v1)) << 16);
  else *reinterpret_cast<float2*>(static_cast<float*>(c) + idx) = make_float2(v0, v1);
}

template <class AOp, class BOp>
constexpr int smemBytes() {
  return STAGES * (AOp::kStageBytes + BOp::kStageBytes) + 2 * BOp::kDeqBytes;
}

/** C[batch] (row-major [M, N], batch stride M·N) = A · B; grid.x = tile count, grid.z = batch. */
template <class AOp, class BOp, bool kOutBf16>
__global__ void __launch_bounds__(THREADS, 2) pipeKernel(AOp a, BOp b, void* __restrict__ c, int M, int N, int K) {
  extern __shared__ __align__(128) char smem[];
  constexpr int kStage = AOp::kStageBytes + BOp::kStageBytes;
  static_assert(AOp::kStageBytes % 128 == 0 && BOp::kStageBytes % 128 == 0 && BOp::kDeqBytes % 128 == 0, "tile alignment");
  static_assert(!AOp::kPrepare, "only B may be prepared");
  static_assert(STAGES >= 3, "prepare one tile ahead needs a stage between the one loading and the one read");
  char* const deqBase = smem + STAGES * kStage;
  const int batch = blockIdx.z;
  const int tilesM = (M + BM - 1) / BM, tilesN = (N + BN - 1) / BN;
  int mt, nt;
  rasterize(blockIdx.x, tilesM, tilesN, mt, nt);
  const int m0 = mt * BM, n0 = nt * BN;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = warp >> 2, wn = warp & 3;
  const int kTiles = (K + BK - 1) / BK;
  auto stageA = [&](int s) { return smem + s * kStage; };
  auto stageB = [&](int s) { return smem + s * kStage + AOp::kStageBytes; };
  auto deq = [&](int i) { return reinterpret_cast<uint16_t*>(deqBase + i * BOp::kDeqBytes); };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  a.init();
  b.init();
  __syncthreads();
  // Prologue: tiles 0 .. STAGES-2, one commit group each (empty groups keep the counting uniform).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < kTiles) {
      a.load(stageA(s), batch, m0, s * BK);
      b.load(stageB(s), batch, n0, s * BK);
    }
    cpAsyncCommit();
  }
  if (BOp::kPrepare) {
    cpAsyncWait<STAGES - 2>();  // tile 0 landed (this thread's copies) ...
    __syncthreads();            // ... and everyone's
    b.prepare(stageB(0), deq(0));
  }
  for (int kt = 0; kt < kTiles; ++kt) {
    // Group g holds tile g. Tile kt must have landed (and kt + 1 when B is prepared one tile ahead).
    if (BOp::kPrepare) cpAsyncWait<STAGES - 3>();
    else cpAsyncWait<STAGES - 2>();
    __syncthreads();  // also: every warp is done with stage (kt-1) % STAGES and deq((kt+1) & 1)
    const int next = kt + STAGES - 1;
    if (next < kTiles) {
      a.load(stageA(next % STAGES), batch, m0, next * BK);
      b.load(stageB(next % STAGES), batch, n0, next * BK);
    }
    cpAsyncCommit();
    const uint16_t* tA = reinterpret_cast<const uint16_t*>(stageA(kt % STAGES));
    const uint16_t* tB = BOp::kPrepare ? deq(kt & 1) : reinterpret_cast<const uint16_t*>(stageB(kt % STAGES));
    mmaTile<AOp::kFragKMajor, BOp::kFragKMajor>(tA, tB, acc, wm, wn, lane);
    if (BOp::kPrepare && kt + 1 < kTiles) b.prepare(stageB((kt + 1) % STAGES), deq((kt + 1) & 1));
  }
  cpAsyncWait<0>();  // no copy may still target shared memory when the block exits

  // Epilogue straight from the accumulators: lane (g, t) holds rows g and g + 8, columns 2t, 2t + 1.
  const int g = lane >> 2, t = lane & 3;
  const int64_t cBase = static_cast<int64_t>(batch) * M * N;
  const bool pairs = (N & 1) == 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + wn * 32 + j * 8 + 2 * t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + wm * 64 + i * 16 + g + 8 * h;
        if (row >= M || col >= N) continue;
        const int64_t idx = cBase + static_cast<int64_t>(row) * N + col;
        if (pairs) store2<kOutBf16>(c, idx, acc[i][j][2 * h], acc[i][j][2 * h + 1]);  // N even: col + 1 < N too
        else {
          store1<kOutBf16>(c, idx, acc[i][j][2 * h]);
          if (col + 1 < N) store1<kOutBf16>(c, idx + 1, acc[i][j][2 * h + 1]);
        }
      }
    }
}

/** Host launch: opts the instantiation into > 48 KB of dynamic shared memory once, checks the grid. */
template <class AOp, class BOp, bool kOutBf16>
void launch(cudaStream_t s, const AOp& a, const BOp& b, void* c, int M, int N, int K, int batch) {
  constexpr int bytes = smemBytes<AOp, BOp>();
  static const bool configured = [] {
    QK_CHECK(cudaFuncSetAttribute(pipeKernel<AOp, BOp, kOutBf16>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    return true;
  }();
  (void)configured;
  const int64_t tiles = int64_t((M + BM - 1) / BM) * ((N + BN - 1) / BN);
  require(tiles >= 1 && tiles <= INT32_MAX, "pipelined gemm: tile count out of range");
  require(batch >= 1 && batch <= 65535, "pipelined gemm: batch must be in [1, 65535]");
  pipeKernel<AOp, BOp, kOutBf16><<<dim3(unsigned(tiles), 1, unsigned(batch)), THREADS, bytes, s>>>(a, b, c, M, N, K);
  QK_LAUNCH_CHECK("pipe::pipeKernel");
}

}  // namespace pipe
}  // namespace qk
