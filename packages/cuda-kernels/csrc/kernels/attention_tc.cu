// Causal flash attention on bf16 tensor cores (FlashAttention-2 algorithm): mma.sync m16n8k16 with
// f32 accumulation, online softmax in f32, GQA, optional packed segment ids, head dim 64 or 128,
// sm_80+ (A100, H100/H200). Written and compiled on a machine without a GPU: unverified until
// dev/check_attention_tc.cu has run on one. attention.cu (f32 SIMT) stays the exact path and the fallback.
//
// Same layouts and conventions as attention.cu: q/out/dout [B, H, S, D], k/v [B, KVH, S, D],
// lse [B, H, S] = m + log(l) of the scaled scores (natural log; inside, scores live in the log2
// domain so that exp2f is one instruction). Inputs are bf16 (f32 inputs are rounded into scratch
// first); outputs are f32 or bf16, written straight from the f32 accumulators.
//
// Tiling: a block is 4 warps and works on 64 query rows × 64 keys per step; each warp owns 16 rows
// (16 keys in the dK/dV kernel). Shared tiles are [64][D] bf16 with a 16-byte-chunk XOR swizzle
// (chunk ^ row % 8), so the 8 row addresses of every ldmatrix phase land in 8 different bank groups.
// Streamed tiles go through a 2-stage cp.async pipeline (load tile t+1 while computing tile t).
//
// Backward (FA2): delta = rowsum(dO∘O); a dK/dV kernel per key tile loops over the query tiles of
// every head of its group, accumulating in registers; a separate dQ kernel per query tile loops over
// key tiles. No atomics: both are deterministic. When B·KVH·keyTiles blocks cannot fill the GPU, the
// heads of a group are split over blocks that write f32 partial dK/dV into scratch, summed in a fixed
// order by a reduce kernel (still deterministic, same result for every run on a given device).
#include <cstdlib>
#include <cstring>

#include "common.cuh"
#include "ptx_sm80.cuh"
#include "kernels.h"

namespace qk {
namespace {

constexpr int kBlk = 64;       // query rows / keys per tile
constexpr int kThreads = 128;  // 4 warps × 16 rows
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------ PTX wrappers (sm_80+)
using ptx::cpAsync16;
using ptx::cpAsyncCommit;
using ptx::cpAsyncWait;
using ptx::ldsm4;
using ptx::ldsm4T;
using ptx::mma16816;

// Two f32 → one bf16x2 register, `lo` in the low half (the lower column of an mma fragment).
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// ------------------------------------------------------------------ shared tiles
// Element offset of (row r, 16-byte chunk c) in a swizzled [64][D] tile.
template <int D>
__device__ __forceinline__ int sw(int r, int c) {
  return r * D + ((c ^ (r & 7)) << 3);
}

// Rows [row0, row0 + 64) of a [seq, D] bf16 matrix into a swizzled tile; rows ≥ seq become zeros.
template <int D>
__device__ __forceinline__ void loadTile(uint16_t* s, const uint16_t* g, int row0, int seq) {
  constexpr int kChunks = D / 8;
  for (int e = threadIdx.x; e < kBlk * kChunks; e += kThreads) {
    const int r = e / kChunks, c = e % kChunks;
    const bool ok = row0 + r < seq;
    cpAsync16(s + sw<D>(r, c), ok ? g + int64_t(row0 + r) * D + c * 8 : g, ok);
  }
}

// A fragment (16×16, row-major in smem): rows r0..r0+15, columns 8·c0 .. 8·c0+15.
template <int D>
__device__ __forceinline__ void ldA(uint32_t (&a)[4], const uint16_t* s, int r0, int c0, int lane) {
  const int r = r0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = c0 + (lane >> 4);
  ldsm4(a, s + sw<D>(r, c));
}
// B fragments of two n-tiles when smem rows are n and columns are k (B = tileᵀ, e.g. K in Q·Kᵀ):
// n rows n0..n0+15, k columns 8·c0 .. 8·c0+15. b[0], b[1]: n-tile n0; b[2], b[3]: n-tile n0+8.
template <int D>
__device__ __forceinline__ void ldB(uint32_t (&b)[4], const uint16_t* s, int n0, int c0, int lane) {
  const int r = n0 + (lane & 7) + (lane >> 4) * 8, c = c0 + ((lane >> 3) & 1);
  ldsm4(b, s + sw<D>(r, c));
}
// B fragments of two n-tiles when smem rows are k and columns are n (B = tile, e.g. V in P·V):
// k rows k0..k0+15, n columns 8·c0 .. 8·c0+15. b[0], b[1]: n-tile c0; b[2], b[3]: n-tile c0+1.
template <int D>
__device__ __forceinline__ void ldBT(uint32_t (&b)[4], const uint16_t* s, int k0, int c0, int lane) {
  const int r = k0 + (lane & 7) + ((lane >> 3) & 1) * 8, c = c0 + (lane >> 4);
  ldsm4T(b, s + sw<D>(r, c));
}

// Accumulator tiles (16 × 8 n-tiles) 2j, 2j+1 as the A fragment of k-step j (FA2's register reuse).
__device__ __forceinline__ void toA(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack(lo[0], lo[1]);
  a[1] = pack(lo[2], lo[3]);
  a[2] = pack(hi[0], hi[1]);
  a[3] = pack(hi[2], hi[3]);
}

// May query row i see key j? Causal, inside the sequence, same segment (attention.cu's rule).
struct Mask {
  const int32_t* seg;  // segment ids of this batch row, or nullptr
  int seq;
  __device__ __forceinline__ bool ok(int i, int j) const {
    return j <= i && i < seq && (seg == nullptr || __ldg(seg + j) == __ldg(seg + i));
  }
};

// The query tile a forward or dQ block owns, its head's K and V, and the mask of its batch row.
// Grid (B·H, query tiles): the block scheduler walks x fastest, so every head's longest causal rows
// (the last query tile, hence y reversed) start in the first wave and the short ones fill the tail.
struct QueryTile {
  int qTile, bh, q0;
  const uint16_t *kh, *vh;
  Mask mask;
};
template <int D>
__device__ __forceinline__ QueryTile queryTile(const AttentionArgs& a, const uint16_t* k, const uint16_t* v) {
  const int qTile = gridDim.y - 1 - blockIdx.y;
  const int bh = blockIdx.x, b = bh / a.heads, kvh = (bh % a.heads) / (a.heads / a.kvHeads);
  const int64_t kvOff = (int64_t(b) * a.kvHeads + kvh) * a.seq * D;
  return {qTile, bh, qTile * kBlk, k + kvOff, v + kvOff,
          Mask{a.segmentIds ? a.segmentIds + int64_t(b) * a.seq : nullptr, a.seq}};
}

// Key tile t of nTiles in the 2-stage pipeline: issue the copy of tile t + 1 into the other stage,
// wait for tile t, and return its K (its V follows at + kBlk·D). The caller syncs before reusing it.
template <int D>
__device__ __forceinline__ const uint16_t* awaitKeyTile(uint16_t* smem, const uint16_t* kh, const uint16_t* vh,
                                                        int t, int nTiles, int seq) {
  constexpr int T = kBlk * D;
  if (t + 1 < nTiles) {
    uint16_t* st = smem + 2 * T * ((t + 1) & 1);
    loadTile<D>(st, kh, (t + 1) * kBlk, seq);
    loadTile<D>(st + T, vh, (t + 1) * kBlk, seq);
  }
  cpAsyncCommit();
  cpAsyncWait<1>();
  __syncthreads();
  return smem + 2 * T * (t & 1);
}

__device__ __forceinline__ void store2(float* p, float x, float y) { *reinterpret_cast<float2*>(p) = make_float2(x, y); }
__device__ __forceinline__ void store2(uint16_t* p, float x, float y) {
  *reinterpret_cast<uint32_t*>(p) = uint32_t(floatToBf16(x)) | (uint32_t(floatToBf16(y)) << 16);
}
__device__ __forceinline__ void store1(float* p, float x) { *p = x; }
__device__ __forceinline__ void store1(uint16_t* p, float x) { *p = floatToBf16(x); }
__device__ __forceinline__ float load1(const float* p) { return *p; }
__device__ __forceinline__ float load1(const uint16_t* p) { return bf16ToFloat(*p); }

__device__ __forceinline__ float quadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ------------------------------------------------------------------ forward
// Block: 64 query rows of one (b, h). Shared: 2 stages × (K, V) tiles; Q passes through stage 1 once.
// Fragment coordinates: thread (g = lane/4, t4 = lane%4) holds rows g and g+8 of its warp's 16 rows,
// columns 2·t4, 2·t4+1 of every 8-wide n-tile.
template <int D, class OutT>
__global__ void __launch_bounds__(kThreads) fwdKernel(AttentionArgs a, const uint16_t* __restrict__ q,
                                                       const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                                                       OutT* __restrict__ out, float* __restrict__ lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 mma needs sm_80; the host launcher refuses older devices
#else
  extern __shared__ __align__(16) uint16_t smem[];
  constexpr int T = kBlk * D, KS = D / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const auto [qTile, bh, q0, kh, vh, mask] = queryTile<D>(a, k, v);

  loadTile<D>(smem + 2 * T, q + int64_t(bh) * a.seq * D, q0, a.seq);
  loadTile<D>(smem, kh, 0, a.seq);
  loadTile<D>(smem + T, vh, 0, a.seq);
  cpAsyncCommit();
  cpAsyncWait<0>();
  __syncthreads();
  uint32_t qf[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) ldA<D>(qf[kk], smem + 2 * T, 16 * warp, 2 * kk, lane);
  __syncthreads();  // stage 1 is about to receive key tile 1

  const float sl2 = a.scale * kLog2e;
  const int row = q0 + 16 * warp + g;  // + 8·hh
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int nTiles = qTile + 1;  // causal: keys < q0 + 64 only
  for (int t = 0; t < nTiles; ++t) {
    const uint16_t* sK = awaitKeyTile<D>(smem, kh, vh, t, nTiles, a.seq);
    const uint16_t* sV = sK + T;
    const int k0 = t * kBlk;

    float s[8][4] = {};
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t bb[4];
        ldB<D>(bb, sK, 16 * np, 2 * kk, lane);
        mma16816(s[2 * np], qf[kk], bb[0], bb[1]);
        mma16816(s[2 * np + 1], qf[kk], bb[2], bb[3]);
      }
    // Only the diagonal tile (which is also the only one that can reach past seq) needs the causal mask.
    const bool needMask = t == qTile || mask.seg != nullptr;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * hh + e];
          x = needMask && !mask.ok(row + 8 * hh, k0 + 8 * nt + 2 * t4 + e) ? -INFINITY : x * sl2;
          mx = fmaxf(mx, x);
        }
      const float mNew = fmaxf(m[hh], quadMax(mx));
      const float mRef = mNew == -INFINITY ? 0.f : mNew;  // fully masked so far: keep exp2 finite
      const float corr = exp2f(m[hh] - mRef);             // m = −inf → 0
      m[hh] = mNew;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * hh + e];
          x = exp2f(x - mRef);
          sum += x;
        }
      l[hh] = l[hh] * corr + sum;  // per-thread partial; the quad is summed once at the end
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[dt][2 * hh] *= corr;
        o[dt][2 * hh + 1] *= corr;
      }
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[4];
      toA(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bb[4];
        ldBT<D>(bb, sV, 16 * kk, 2 * dp, lane);
        mma16816(o[2 * dp], pa, bb[0], bb[1]);
        mma16816(o[2 * dp + 1], pa, bb[2], bb[3]);
      }
    }
    __syncthreads();  // the next iteration loads into this stage
  }

#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float lt = quadSum(l[hh]);
    const int i = row + 8 * hh;
    if (i >= a.seq) continue;
    const float inv = 1.0f / lt;  // lt > 0: key i itself is always visible to row i
    OutT* orow = out + (int64_t(bh) * a.seq + i) * D + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) store2(orow + 8 * dt, o[dt][2 * hh] * inv, o[dt][2 * hh + 1] * inv);
    if (t4 == 0) lse[int64_t(bh) * a.seq + i] = (m[hh] + log2f(lt)) * kLn2;
  }
#endif
}

// ------------------------------------------------------------------ backward
// delta[r] = Σ_d dout[r, d] · out[r, d], one warp per row (grid-stride: the grid is capped by gridFor).
template <class TD, class TO>
__global__ void deltaKernel(const TD* __restrict__ dout, const TO* __restrict__ out, int64_t rows, int D,
                            float* __restrict__ delta) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < rows; r += warps) {
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc = fmaf(load1(dout + r * D + d), load1(out + r * D + d), acc);
    acc = warpSum(acc);
    if (lane == 0) delta[r] = acc;
  }
}

// dq_i = scale · Σ_j dS_ij k_j with dS_ij = P_ij (dP_ij − delta_i), P_ij = exp(s_ij − lse_i), dP_ij = dout_i · v_j.
// Block: 64 query rows of one (b, h); Q and dO fragments stay in registers; key tiles are processed as
// two 32-key halves to keep S and dP at 16 registers each.
template <int D, class OutT>
__global__ void __launch_bounds__(kThreads) dqKernel(AttentionArgs a, const uint16_t* __restrict__ q,
                                                      const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                                                      const uint16_t* __restrict__ dout, const float* __restrict__ lse,
                                                      const float* __restrict__ delta, OutT* __restrict__ dq) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  extern __shared__ __align__(16) uint16_t smem[];
  constexpr int T = kBlk * D, KS = D / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const auto [qTile, bh, q0, kh, vh, mask] = queryTile<D>(a, k, v);

  loadTile<D>(smem + 2 * T, q + int64_t(bh) * a.seq * D, q0, a.seq);
  loadTile<D>(smem + 3 * T, dout + int64_t(bh) * a.seq * D, q0, a.seq);
  loadTile<D>(smem, kh, 0, a.seq);
  loadTile<D>(smem + T, vh, 0, a.seq);
  cpAsyncCommit();
  cpAsyncWait<0>();
  __syncthreads();
  uint32_t qf[KS][4], df[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    ldA<D>(qf[kk], smem + 2 * T, 16 * warp, 2 * kk, lane);
    ldA<D>(df[kk], smem + 3 * T, 16 * warp, 2 * kk, lane);
  }
  __syncthreads();

  const float sl2 = a.scale * kLog2e;
  const int row = q0 + 16 * warp + g;
  float lse2[2], dl[2];
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = row + 8 * hh;
    lse2[hh] = i < a.seq ? lse[int64_t(bh) * a.seq + i] * kLog2e : 0.f;
    dl[hh] = i < a.seq ? delta[int64_t(bh) * a.seq + i] : 0.f;
  }
  float acc[D / 8][4] = {};
  const int nTiles = qTile + 1;
  for (int t = 0; t < nTiles; ++t) {
    const uint16_t* sK = awaitKeyTile<D>(smem, kh, vh, t, nTiles, a.seq);
    const uint16_t* sV = sK + T;
    const bool needMask = t == qTile || mask.seg != nullptr;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int n0 = 32 * half, k0 = t * kBlk + n0;
      float s[4][4] = {}, dp[4][4] = {};
#pragma unroll
      for (int kk = 0; kk < KS; ++kk)
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t bb[4];
          ldB<D>(bb, sK, n0 + 16 * np, 2 * kk, lane);
          mma16816(s[2 * np], qf[kk], bb[0], bb[1]);
          mma16816(s[2 * np + 1], qf[kk], bb[2], bb[3]);
          ldB<D>(bb, sV, n0 + 16 * np, 2 * kk, lane);
          mma16816(dp[2 * np], df[kk], bb[0], bb[1]);
          mma16816(dp[2 * np + 1], df[kk], bb[2], bb[3]);
        }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int hh = c >> 1, i = row + 8 * hh, j = k0 + 8 * nt + 2 * t4 + (c & 1);
          const float p = needMask && !mask.ok(i, j) ? 0.f : exp2f(s[nt][c] * sl2 - lse2[hh]);
          s[nt][c] = p * (dp[nt][c] - dl[hh]);  // dS
        }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t da[4];
        toA(da, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int dp2 = 0; dp2 < D / 16; ++dp2) {
          uint32_t bb[4];
          ldBT<D>(bb, sK, n0 + 16 * kk, 2 * dp2, lane);
          mma16816(acc[2 * dp2], da, bb[0], bb[1]);
          mma16816(acc[2 * dp2 + 1], da, bb[2], bb[3]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int i = row + 8 * hh;
    if (i >= a.seq) continue;
    OutT* drow = dq + (int64_t(bh) * a.seq + i) * D + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) store2(drow + 8 * dt, acc[dt][2 * hh] * a.scale, acc[dt][2 * hh + 1] * a.scale);
  }
#endif
}

// dv_j = Σ_{h in split} Σ_i P_ij dout_i ;  dk_j = scale · Σ_{h in split} Σ_i dS_ij q_i.
// Block: 64 keys of one (b, kvh) and `per` query heads of its group; the warps compute Sᵀ = K·Qᵀ and
// dPᵀ = V·dOᵀ (16 keys × 32 queries at a time) so P and dS come out as A fragments for dV and dK.
// Shared: K, V tiles; 2 stages × (Q, dO tiles, lse·log2e [64], delta [64]).
template <int D, class OutT, bool Partial>
__global__ void __launch_bounds__(kThreads) dkvKernel(AttentionArgs a, int splits, const uint16_t* __restrict__ q,
                                                       const uint16_t* __restrict__ k, const uint16_t* __restrict__ v,
                                                       const uint16_t* __restrict__ dout, const float* __restrict__ lse,
                                                       const float* __restrict__ delta, OutT* __restrict__ dk,
                                                       OutT* __restrict__ dv, float* __restrict__ part) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  extern __shared__ __align__(16) uint16_t smem[];
  constexpr int T = kBlk * D, KS = D / 16;
  float* stats = reinterpret_cast<float*>(smem + 6 * T);  // stage s: [128 s, 128 s + 64) lse2, then delta
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int kTile = blockIdx.y, k0 = kTile * kBlk;  // key tile 0 sees the most query tiles: y = 0 runs first
  const int split = blockIdx.x % splits, bkv = blockIdx.x / splits;
  const int b = bkv / a.kvHeads, kvh = bkv % a.kvHeads, group = a.heads / a.kvHeads, per = group / splits;
  const int h0 = kvh * group + split * per;
  const int nQ = (a.seq + kBlk - 1) / kBlk, qPer = nQ - kTile, items = per * qPer;
  const Mask mask{a.segmentIds ? a.segmentIds + int64_t(b) * a.seq : nullptr, a.seq};

  // Item it = (head h0 + it / qPer, query tile kTile + it % qPer) → stage st.
  auto issue = [&](int it, int st) {
    const int64_t bh = int64_t(b) * a.heads + h0 + it / qPer;
    const int i0 = (kTile + it % qPer) * kBlk;
    loadTile<D>(smem + 2 * T + 2 * T * st, q + bh * a.seq * D, i0, a.seq);
    loadTile<D>(smem + 3 * T + 2 * T * st, dout + bh * a.seq * D, i0, a.seq);
    const int r = threadIdx.x & 63, i = i0 + r;
    if (threadIdx.x < 64) stats[128 * st + r] = i < a.seq ? lse[bh * a.seq + i] * kLog2e : 0.f;
    else stats[128 * st + 64 + r] = i < a.seq ? delta[bh * a.seq + i] : 0.f;
  };
  loadTile<D>(smem, k + int64_t(bkv) * a.seq * D, k0, a.seq);
  loadTile<D>(smem + T, v + int64_t(bkv) * a.seq * D, k0, a.seq);
  issue(0, 0);
  cpAsyncCommit();

  const float sl2 = a.scale * kLog2e;
  const int key = k0 + 16 * warp + g;  // + 8·hh: the rows of this thread's fragments
  float accK[D / 8][4] = {}, accV[D / 8][4] = {};
  for (int it = 0; it < items; ++it) {
    if (it + 1 < items) issue(it + 1, (it + 1) & 1);
    cpAsyncCommit();
    cpAsyncWait<1>();
    __syncthreads();
    const int st = it & 1, i0 = (kTile + it % qPer) * kBlk;
    const uint16_t* sQ = smem + 2 * T + 2 * T * st;
    const uint16_t* sO = sQ + T;
    const float* sL = stats + 128 * st;
    const float* sD = sL + 64;
    const bool needMask = i0 == k0 || i0 + kBlk > a.seq || mask.seg != nullptr;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int n0 = 32 * half;
      float s[4][4] = {}, dp[4][4] = {};
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t ka[4], va[4];
        ldA<D>(ka, smem, 16 * warp, 2 * kk, lane);
        ldA<D>(va, smem + T, 16 * warp, 2 * kk, lane);
#pragma unroll
        for (int np = 0; np < 2; ++np) {
          uint32_t bb[4];
          ldB<D>(bb, sQ, n0 + 16 * np, 2 * kk, lane);
          mma16816(s[2 * np], ka, bb[0], bb[1]);
          mma16816(s[2 * np + 1], ka, bb[2], bb[3]);
          ldB<D>(bb, sO, n0 + 16 * np, 2 * kk, lane);
          mma16816(dp[2 * np], va, bb[0], bb[1]);
          mma16816(dp[2 * np + 1], va, bb[2], bb[3]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int col = n0 + 8 * nt + 2 * t4 + (c & 1), j = key + 8 * (c >> 1);
          const float p = needMask && !mask.ok(i0 + col, j) ? 0.f : exp2f(s[nt][c] * sl2 - sL[col]);
          s[nt][c] = p;
          dp[nt][c] = p * (dp[nt][c] - sD[col]);  // dSᵀ
        }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t pa[4], da[4];
        toA(pa, s[2 * kk], s[2 * kk + 1]);
        toA(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
        for (int dp2 = 0; dp2 < D / 16; ++dp2) {
          uint32_t bb[4];
          ldBT<D>(bb, sO, n0 + 16 * kk, 2 * dp2, lane);
          mma16816(accV[2 * dp2], pa, bb[0], bb[1]);
          mma16816(accV[2 * dp2 + 1], pa, bb[2], bb[3]);
          ldBT<D>(bb, sQ, n0 + 16 * kk, 2 * dp2, lane);
          mma16816(accK[2 * dp2], da, bb[0], bb[1]);
          mma16816(accK[2 * dp2 + 1], da, bb[2], bb[3]);
        }
      }
    }
    __syncthreads();
  }
  const int64_t kvRows = int64_t(a.batch) * a.kvHeads * a.seq;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int j = key + 8 * hh;
    if (j >= a.seq) continue;
    const int64_t off = (int64_t(bkv) * a.seq + j) * D + 2 * t4;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const float kx = accK[dt][2 * hh] * a.scale, ky = accK[dt][2 * hh + 1] * a.scale;
      if constexpr (Partial) {
        float* pk = part + int64_t(split) * kvRows * D + off + 8 * dt;
        store2(pk, kx, ky);
        store2(pk + int64_t(splits) * kvRows * D, accV[dt][2 * hh], accV[dt][2 * hh + 1]);
      } else {
        store2(dk + off + 8 * dt, kx, ky);
        store2(dv + off + 8 * dt, accV[dt][2 * hh], accV[dt][2 * hh + 1]);
      }
    }
  }
#endif
}

// dst[e] = Σ_{s < splits} part[s·n + e], in split order (deterministic).
template <class OutT>
__global__ void sumSplitsKernel(const float* __restrict__ part, int splits, int64_t n, OutT* __restrict__ dst) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) acc += part[s * n + e];
    store1(dst + e, acc);
  }
}

__global__ void toBf16Kernel(const float* __restrict__ x, uint16_t* __restrict__ y, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    y[e] = floatToBf16(x[e]);
}

// ------------------------------------------------------------------ host side
struct DeviceInfo {
  int ccMajor = 0, sms = 0;
};
// Device 0's properties, queried once; zeros when no device is usable (then nothing selects TC).
const DeviceInfo& deviceInfo() {
  static const DeviceInfo info = [] {
    DeviceInfo d;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&d.ccMajor, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
      cudaGetLastError();
      return DeviceInfo{};
    }
    return d;
  }();
  return info;
}

enum class Path { Default, Simt, Tc };
Path pathFromEnv() {
  static const Path p = [] {
    const char* e = std::getenv("QLORA_CUDA_ATTENTION");
    if (e == nullptr || *e == 0) return Path::Default;
    if (std::strcmp(e, "simt") == 0 || std::strcmp(e, "legacy") == 0) return Path::Simt;
    if (std::strcmp(e, "tc") == 0) return Path::Tc;
    return Path::Default;
  }();
  return p;
}

constexpr size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

// Heads of a group per dK/dV block: the smallest divisor `splits` of the group size that gives at
// least 4 blocks per SM (B·KVH·keyTiles alone is one wave for seq 2048, KVH 8 on 132 SMs).
int gForcedSplits = 0;  // attentionTcSetSplits (harness only)
int splitsFor(const AttentionArgs& a) {
  const int group = a.heads / a.kvHeads, sms = deviceInfo().sms > 0 ? deviceInfo().sms : 132;
  if (gForcedSplits > 0 && group % gForcedSplits == 0) return gForcedSplits;
  const int64_t blocks = int64_t(a.batch) * a.kvHeads * ((a.seq + kBlk - 1) / kBlk);
  int s = 1;
  while (s < group && blocks * s < 4 * int64_t(sms)) {
    do ++s;
    while (group % s != 0);
  }
  return s;
}

// Scratch layout (each part 256-byte aligned): [delta f32 B·H·S] [dK, dV partials f32 2·splits·B·KVH·S·D
// when splits > 1] [bf16 copies of f32 inputs: q (, dout) B·H·S·D, k, v B·KVH·S·D].
struct Plan {
  int splits = 1;
  size_t delta = 0, part = 0, cast = 0, total = 0;
};
Plan planOf(const AttentionArgs& a, bool backward, int inDtype) {
  Plan p;
  const size_t qn = size_t(a.batch) * a.heads * a.seq * a.headDim, kn = size_t(a.batch) * a.kvHeads * a.seq * a.headDim;
  size_t at = 0;
  if (backward) {
    p.delta = at;
    at += align256(sizeof(float) * a.batch * a.heads * a.seq);
    p.splits = splitsFor(a);
    p.part = at;
    if (p.splits > 1) at += align256(sizeof(float) * 2 * p.splits * kn);
  }
  p.cast = at;
  if (inDtype == F32) at += align256(2 * ((backward ? 2 : 1) * qn + 2 * kn));
  p.total = at;
  return p;
}

void checkTc(const AttentionArgs& a, int inDtype, int outDtype) {
  require(a.batch >= 1 && a.heads >= 1 && a.kvHeads >= 1 && a.seq >= 1, "attention: batch, heads, kvHeads, seq must be ≥ 1");
  require(a.heads % a.kvHeads == 0, "attention: heads must be a multiple of kvHeads");
  require(int64_t(a.batch) * a.heads <= 65535, "attention: batch·heads must be ≤ 65535");
  require((a.seq + kBlk - 1) / kBlk <= 65535, "attention (tensor cores): seq must be ≤ 65535·64");
  require(a.headDim == 64 || a.headDim == 128, "attention (tensor cores): headDim must be 64 or 128 (others: SIMT path)");
  require(deviceInfo().ccMajor >= 8, "attention (tensor cores): needs compute capability 8.0+ (bf16 mma.sync)");
  require(inDtype == F32 || inDtype == BF16, "attention (tensor cores): inputs must be f32 or bf16");
  require(outDtype == F32 || outDtype == BF16, "attention (tensor cores): outputs must be f32 or bf16");
}
// cp.async moves 16-byte chunks, outputs are stored as pairs (float2 / bf16x2).
void checkAligned(const void* p, size_t bytes, const char* what) {
  require(reinterpret_cast<uintptr_t>(p) % bytes == 0,
          std::string("attention (tensor cores): ") + what + " must be " + std::to_string(bytes) + "-byte aligned");
}

template <class K>
void allowSmem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) QK_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// f32 inputs → bf16 scratch copies; bf16 inputs pass through.
const uint16_t* asBf16(cudaStream_t s, const void* x, int dtype, size_t n, uint16_t*& cursor) {
  if (dtype == BF16) return static_cast<const uint16_t*>(x);
  uint16_t* y = cursor;
  cursor += n;
  toBf16Kernel<<<gridFor(n, 256), 256, 0, s>>>(static_cast<const float*>(x), y, int64_t(n));
  QK_LAUNCH_CHECK("toBf16Kernel");
  return y;
}

void launchDelta(cudaStream_t s, int doutDtype, const void* dout, int outDtype, const void* out, int64_t rows, int D,
                 float* delta) {
  const unsigned grid = gridFor(size_t(rows) * 32, 256);
  const bool d32 = doutDtype == F32, o32 = outDtype == F32;
  const float *df = static_cast<const float*>(dout), *of = static_cast<const float*>(out);
  const uint16_t *dh = static_cast<const uint16_t*>(dout), *oh = static_cast<const uint16_t*>(out);
  if (d32 && o32) deltaKernel<<<grid, 256, 0, s>>>(df, of, rows, D, delta);
  else if (d32) deltaKernel<<<grid, 256, 0, s>>>(df, oh, rows, D, delta);
  else if (o32) deltaKernel<<<grid, 256, 0, s>>>(dh, of, rows, D, delta);
  else deltaKernel<<<grid, 256, 0, s>>>(dh, oh, rows, D, delta);
}

template <int D, class OutT>
void launchForward(cudaStream_t s, const AttentionArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v, OutT* out,
                   float* lse) {
  const size_t smem = 4 * size_t(kBlk) * D * sizeof(uint16_t);  // D=128: 64 KB
  allowSmem(fwdKernel<D, OutT>, smem);
  const dim3 grid(a.batch * a.heads, (a.seq + kBlk - 1) / kBlk);
  fwdKernel<D, OutT><<<grid, kThreads, smem, s>>>(a, q, k, v, out, lse);
  QK_LAUNCH_CHECK("attention fwdKernel (tc)");
}

template <int D, class OutT>
void launchBackward(cudaStream_t s, const AttentionArgs& a, const Plan& p, char* scratch, const uint16_t* dout, const uint16_t* q,
                    const uint16_t* k, const uint16_t* v, const float* lse, OutT* dq, OutT* dk, OutT* dv) {
  const float* delta = reinterpret_cast<const float*>(scratch + p.delta);
  const size_t smemQ = 4 * size_t(kBlk) * D * sizeof(uint16_t);
  allowSmem(dqKernel<D, OutT>, smemQ);
  const dim3 gridQ(a.batch * a.heads, (a.seq + kBlk - 1) / kBlk);
  dqKernel<D, OutT><<<gridQ, kThreads, smemQ, s>>>(a, q, k, v, dout, lse, delta, dq);
  QK_LAUNCH_CHECK("attention dqKernel (tc)");

  const size_t smemKV = 6 * size_t(kBlk) * D * sizeof(uint16_t) + 4 * kBlk * sizeof(float);  // D=128: 97 KB
  const dim3 gridKV(a.batch * a.kvHeads * p.splits, (a.seq + kBlk - 1) / kBlk);
  if (p.splits == 1) {
    allowSmem(dkvKernel<D, OutT, false>, smemKV);
    dkvKernel<D, OutT, false><<<gridKV, kThreads, smemKV, s>>>(a, 1, q, k, v, dout, lse, delta, dk, dv, nullptr);
    QK_LAUNCH_CHECK("attention dkvKernel (tc)");
    return;
  }
  float* part = reinterpret_cast<float*>(scratch + p.part);
  allowSmem(dkvKernel<D, OutT, true>, smemKV);
  dkvKernel<D, OutT, true><<<gridKV, kThreads, smemKV, s>>>(a, p.splits, q, k, v, dout, lse, delta, nullptr, nullptr, part);
  QK_LAUNCH_CHECK("attention dkvKernel (tc, split heads)");
  const int64_t kn = int64_t(a.batch) * a.kvHeads * a.seq * D;
  sumSplitsKernel<OutT><<<gridFor(kn, 256), 256, 0, s>>>(part, p.splits, kn, dk);
  QK_LAUNCH_CHECK("attention sumSplitsKernel (dk)");
  sumSplitsKernel<OutT><<<gridFor(kn, 256), 256, 0, s>>>(part + int64_t(p.splits) * kn, p.splits, kn, dv);
  QK_LAUNCH_CHECK("attention sumSplitsKernel (dv)");
}

template <class OutT>
void forwardTyped(cudaStream_t s, const AttentionArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v, OutT* out,
                  float* lse) {
  if (a.headDim == 64) launchForward<64>(s, a, q, k, v, out, lse);
  else launchForward<128>(s, a, q, k, v, out, lse);
}
template <class OutT>
void backwardTyped(cudaStream_t s, const AttentionArgs& a, const Plan& p, char* scratch, const uint16_t* dout,
                   const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* lse, void* dq, void* dk, void* dv) {
  OutT *gq = static_cast<OutT*>(dq), *gk = static_cast<OutT*>(dk), *gv = static_cast<OutT*>(dv);
  if (a.headDim == 64) launchBackward<64>(s, a, p, scratch, dout, q, k, v, lse, gq, gk, gv);
  else launchBackward<128>(s, a, p, scratch, dout, q, k, v, lse, gq, gk, gv);
}

}  // namespace

bool attentionTcSupported(const AttentionArgs& a) {
  return (a.headDim == 64 || a.headDim == 128) && a.kvHeads >= 1 && a.heads % a.kvHeads == 0 && deviceInfo().ccMajor >= 8;
}

bool attentionUseTc(const AttentionArgs& a, bool bf16Buffers) {
  const Path p = pathFromEnv();
  return (p == Path::Tc || (p == Path::Default && bf16Buffers)) && attentionTcSupported(a);
}

size_t attentionTcScratchBytes(const AttentionArgs& a, bool backward, int inDtype) { return planOf(a, backward, inDtype).total; }

void attentionTcSetSplits(int splits) { gForcedSplits = splits; }

void attentionForwardTc(cudaStream_t s, const AttentionArgs& a, int inDtype, const void* q, const void* k, const void* v,
                        int outDtype, void* out, float* lse, void* scratch) {
  checkTc(a, inDtype, outDtype);
  const Plan p = planOf(a, false, inDtype);
  require(p.total == 0 || scratch != nullptr, "attention (tensor cores): f32 inputs need scratch (attentionTcScratchBytes)");
  for (const void* x : {q, k, v}) checkAligned(x, inDtype == F32 ? 4 : 16, "q, k, v");
  checkAligned(out, outDtype == F32 ? 8 : 4, "out");
  checkAligned(scratch, 16, "scratch");
  const size_t qn = size_t(a.batch) * a.heads * a.seq * a.headDim, kn = size_t(a.batch) * a.kvHeads * a.seq * a.headDim;
  uint16_t* cursor = reinterpret_cast<uint16_t*>(static_cast<char*>(scratch) + p.cast);
  const uint16_t* q16 = asBf16(s, q, inDtype, qn, cursor);
  const uint16_t* k16 = asBf16(s, k, inDtype, kn, cursor);
  const uint16_t* v16 = asBf16(s, v, inDtype, kn, cursor);
  if (outDtype == F32) forwardTyped(s, a, q16, k16, v16, static_cast<float*>(out), lse);
  else forwardTyped(s, a, q16, k16, v16, static_cast<uint16_t*>(out), lse);
}

void attentionBackwardTc(cudaStream_t s, const AttentionArgs& a, int inDtype, const void* dout, const void* q, const void* k,
                         const void* v, int outDtype, const void* out, const float* lse, int gradDtype, void* dq, void* dk,
                         void* dv, void* scratch) {
  checkTc(a, inDtype, outDtype);
  require(gradDtype == F32 || gradDtype == BF16, "attention (tensor cores): gradients must be f32 or bf16");
  require(scratch != nullptr, "attentionBackward (tensor cores): scratch of attentionTcScratchBytes bytes is required");
  for (const void* x : {dout, q, k, v}) checkAligned(x, inDtype == F32 ? 4 : 16, "dout, q, k, v");
  for (const void* x : {dq, dk, dv}) checkAligned(x, gradDtype == F32 ? 8 : 4, "dq, dk, dv");
  checkAligned(scratch, 16, "scratch");
  const Plan p = planOf(a, true, inDtype);
  char* base = static_cast<char*>(scratch);
  const int64_t rows = int64_t(a.batch) * a.heads * a.seq;
  float* delta = reinterpret_cast<float*>(base + p.delta);
  // delta from dout and out as given (before any rounding of dout to bf16).
  launchDelta(s, inDtype, dout, outDtype, out, rows, a.headDim, delta);
  QK_LAUNCH_CHECK("attention deltaKernel (tc)");
  const size_t qn = size_t(rows) * a.headDim, kn = size_t(a.batch) * a.kvHeads * a.seq * a.headDim;
  uint16_t* cursor = reinterpret_cast<uint16_t*>(base + p.cast);
  const uint16_t* do16 = asBf16(s, dout, inDtype, qn, cursor);
  const uint16_t* q16 = asBf16(s, q, inDtype, qn, cursor);
  const uint16_t* k16 = asBf16(s, k, inDtype, kn, cursor);
  const uint16_t* v16 = asBf16(s, v, inDtype, kn, cursor);
  if (gradDtype == F32) backwardTyped<float>(s, a, p, base, do16, q16, k16, v16, lse, dq, dk, dv);
  else backwardTyped<uint16_t>(s, a, p, base, do16, q16, k16, v16, lse, dq, dk, dv);
}

void attentionForwardBf16(cudaStream_t s, const AttentionArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                          uint16_t* out, float* lse) {
  attentionForwardTc(s, a, BF16, q, k, v, BF16, out, lse, nullptr);
}

void attentionBackwardBf16(cudaStream_t s, const AttentionArgs& a, const uint16_t* dout, const uint16_t* q, const uint16_t* k,
                           const uint16_t* v, const uint16_t* out, const float* lse, uint16_t* dq, uint16_t* dk, uint16_t* dv,
                           void* scratch) {
  attentionBackwardTc(s, a, BF16, dout, q, k, v, BF16, out, lse, BF16, dq, dk, dv, scratch);
}

}  // namespace qk
