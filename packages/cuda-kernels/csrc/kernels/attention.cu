// Causal flash attention (forward + backward) with grouped-query attention and optional segment
// ids, f32 in/out, SIMT (CUDA cores). Never materialises a seq×seq matrix: the forward keeps an
// online softmax per query row; the backward recomputes probabilities from the saved lse.
// Reference: reference backend attention / attentionBackward.
//
// Layout: q/out/dout [B, H, S, D], k/v [B, KVH, S, D], lse [B, H, S]. D ≤ 128.
// Forward/dq: a block = 8 warps = 8 consecutive query rows of one (b, h). Keys come in tiles of 32
// through shared memory; lane j scores key j of the tile (full dot product, no per-key shuffle
// reduction), then lanes switch to owning output dims d = lane + 32·t for the P·V accumulation.
// dk/dv: a block = 8 consecutive key rows of one (b, kvh); query tiles of 32 rows of every head in
// the group stream through shared memory; no atomics (deterministic).
#include "common.cuh"
#include "kernels.h"

namespace qk {
namespace {

constexpr int kRows = 8, kTile = 32, kMaxD = 128, kPer = kMaxD / 32;

__device__ __forceinline__ bool allowed(const int32_t* seg, int64_t segBase, int i, int j) {
  return j <= i && (seg == nullptr || seg[segBase + j] == seg[segBase + i]);
}

__global__ void __launch_bounds__(kRows * 32) attentionForwardKernel(AttentionArgs a, const float* __restrict__ q,
                                                                     const float* __restrict__ k, const float* __restrict__ v,
                                                                     float* __restrict__ out, float* __restrict__ lse) {
  extern __shared__ float smem[];
  const int D = a.headDim, P = D + 1;  // +1 padding: lane j reads row j, no bank conflicts
  float* sK = smem;
  float* sV = sK + kTile * P;
  float* sQ = sV + kTile * P;  // [kRows][D]
  const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads, kvh = h / (a.heads / a.kvHeads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row0 = blockIdx.x * kRows, i = row0 + warp;
  const float* qh = q + (int64_t(bh) * a.seq) * D;
  const float* kh = k + (int64_t(b) * a.kvHeads + kvh) * a.seq * D;
  const float* vh = v + (int64_t(b) * a.kvHeads + kvh) * a.seq * D;
  const int64_t segBase = int64_t(b) * a.seq;
  for (int e = threadIdx.x; e < kRows * D; e += blockDim.x) {
    const int r = row0 + e / D;
    sQ[e] = r < a.seq ? qh[int64_t(r) * D + e % D] : 0.f;
  }
  float m = -INFINITY, l = 0.f, acc[kPer] = {};
  const int lastKey = min(row0 + kRows, a.seq) - 1;
  for (int j0 = 0; j0 <= lastKey; j0 += kTile) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * D; e += blockDim.x) {
      const int j = j0 + e / D, d = e % D;
      sK[(e / D) * P + d] = j < a.seq ? kh[int64_t(j) * D + d] : 0.f;
      sV[(e / D) * P + d] = j < a.seq ? vh[int64_t(j) * D + d] : 0.f;
    }
    __syncthreads();
    if (i >= a.seq) continue;
    const int j = j0 + lane;
    float s = -INFINITY;
    if (j < a.seq && allowed(a.segmentIds, segBase, i, j)) {
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot = fmaf(sQ[warp * D + d], sK[lane * P + d], dot);
      s = dot * a.scale;
    }
    const float tileMax = warpMax(s);
    if (tileMax == -INFINITY) continue;  // no visible key in this tile (warp-uniform)
    const float mNew = fmaxf(m, tileMax);
    const float corr = expf(m - mNew);  // m = −inf on the first visible tile → 0
    const float p = expf(s - mNew);
    l = l * corr + warpSum(p);
#pragma unroll
    for (int t = 0; t < kPer; ++t) acc[t] *= corr;
    for (int jj = 0; jj < kTile; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      if (pj == 0.f) continue;  // warp-uniform
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        const int d = lane + 32 * t;
        if (d < D) acc[t] = fmaf(pj, sV[jj * P + d], acc[t]);
      }
    }
    m = mNew;
  }
  if (i >= a.seq) return;
  const float inv = 1.0f / l;
  float* o = out + (int64_t(bh) * a.seq + i) * D;
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    const int d = lane + 32 * t;
    if (d < D) o[d] = acc[t] * inv;
  }
  if (lane == 0) lse[int64_t(bh) * a.seq + i] = m + logf(l);
}

// delta[b,h,i] = Σ_d dout·out (the softmax-backward row term).
__global__ void attentionDeltaKernel(const float* __restrict__ dout, const float* __restrict__ out, int64_t rows, int D,
                                     float* __restrict__ delta) {
  // one warp per row, grid-stride: gridFor caps the grid, so rows beyond it must loop (r is
  // warp-uniform, so the shuffle in warpSum stays convergent)
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < rows; r += warps) {
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc = fmaf(dout[r * D + d], out[r * D + d], acc);
    acc = warpSum(acc);
    if (lane == 0) delta[r] = acc;
  }
}

// dq_i = scale · Σ_j P_ij (dP_ij − delta_i) k_j,  P_ij = exp(scale·q_i·k_j − lse_i),  dP_ij = dout_i·v_j
__global__ void __launch_bounds__(kRows * 32) attentionDqKernel(AttentionArgs a, const float* __restrict__ q,
                                                                const float* __restrict__ k, const float* __restrict__ v,
                                                                const float* __restrict__ dout, const float* __restrict__ lse,
                                                                const float* __restrict__ delta, float* __restrict__ dq) {
  extern __shared__ float smem[];
  const int D = a.headDim, P = D + 1;
  float* sK = smem;
  float* sV = sK + kTile * P;
  float* sQ = sV + kTile * P;
  float* sO = sQ + kRows * D;
  const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads, kvh = h / (a.heads / a.kvHeads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row0 = blockIdx.x * kRows, i = row0 + warp;
  const float* kh = k + (int64_t(b) * a.kvHeads + kvh) * a.seq * D;
  const float* vh = v + (int64_t(b) * a.kvHeads + kvh) * a.seq * D;
  const int64_t segBase = int64_t(b) * a.seq;
  for (int e = threadIdx.x; e < kRows * D; e += blockDim.x) {
    const int r = row0 + e / D;
    const int64_t idx = (int64_t(bh) * a.seq + r) * D + e % D;
    sQ[e] = r < a.seq ? q[idx] : 0.f;
    sO[e] = r < a.seq ? dout[idx] : 0.f;
  }
  const float li = i < a.seq ? lse[int64_t(bh) * a.seq + i] : 0.f;
  const float di = i < a.seq ? delta[int64_t(bh) * a.seq + i] : 0.f;
  float acc[kPer] = {};
  const int lastKey = min(row0 + kRows, a.seq) - 1;
  for (int j0 = 0; j0 <= lastKey; j0 += kTile) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * D; e += blockDim.x) {
      const int j = j0 + e / D, d = e % D;
      sK[(e / D) * P + d] = j < a.seq ? kh[int64_t(j) * D + d] : 0.f;
      sV[(e / D) * P + d] = j < a.seq ? vh[int64_t(j) * D + d] : 0.f;
    }
    __syncthreads();
    if (i >= a.seq) continue;
    const int j = j0 + lane;
    float ds = 0.f;
    if (j < a.seq && allowed(a.segmentIds, segBase, i, j)) {
      float qk = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) {
        qk = fmaf(sQ[warp * D + d], sK[lane * P + d], qk);
        dp = fmaf(sO[warp * D + d], sV[lane * P + d], dp);
      }
      const float p = expf(qk * a.scale - li);
      ds = p * (dp - di);
    }
    for (int jj = 0; jj < kTile; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      if (dsj == 0.f) continue;
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        const int d = lane + 32 * t;
        if (d < D) acc[t] = fmaf(dsj, sK[jj * P + d], acc[t]);
      }
    }
  }
  if (i >= a.seq) return;
  float* o = dq + (int64_t(bh) * a.seq + i) * D;
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    const int d = lane + 32 * t;
    if (d < D) o[d] = acc[t] * a.scale;
  }
}

// dv_j = Σ_{h in group} Σ_i P_ij dout_i ;  dk_j = scale · Σ_{h in group} Σ_i dS_ij q_i
__global__ void __launch_bounds__(kRows * 32) attentionDkvKernel(AttentionArgs a, const float* __restrict__ q,
                                                                 const float* __restrict__ k, const float* __restrict__ v,
                                                                 const float* __restrict__ dout, const float* __restrict__ lse,
                                                                 const float* __restrict__ delta, float* __restrict__ dk,
                                                                 float* __restrict__ dv) {
  extern __shared__ float smem[];
  const int D = a.headDim, P = D + 1;
  float* sQ = smem;               // [kTile][P] query rows
  float* sO = sQ + kTile * P;     // [kTile][P] dout rows
  float* sK = sO + kTile * P;     // [kRows][D]
  float* sV = sK + kRows * D;     // [kRows][D]
  float* sL = sV + kRows * D;     // [kTile] lse
  float* sD = sL + kTile;         // [kTile] delta
  const int bkv = blockIdx.y, b = bkv / a.kvHeads, kvh = bkv % a.kvHeads, group = a.heads / a.kvHeads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int key0 = blockIdx.x * kRows, j = key0 + warp;
  const int64_t kvBase = int64_t(bkv) * a.seq * D;
  const int64_t segBase = int64_t(b) * a.seq;
  for (int e = threadIdx.x; e < kRows * D; e += blockDim.x) {
    const int r = key0 + e / D;
    sK[e] = r < a.seq ? k[kvBase + int64_t(r) * D + e % D] : 0.f;
    sV[e] = r < a.seq ? v[kvBase + int64_t(r) * D + e % D] : 0.f;
  }
  float accK[kPer] = {}, accV[kPer] = {};
  for (int g = 0; g < group; ++g) {
    const int h = kvh * group + g;
    const int64_t bh = int64_t(b) * a.heads + h;
    for (int i0 = key0 - key0 % kTile; i0 < a.seq; i0 += kTile) {  // queries i ≥ j only
      __syncthreads();
      for (int e = threadIdx.x; e < kTile * D; e += blockDim.x) {
        const int r = i0 + e / D, d = e % D;
        const int64_t idx = (bh * a.seq + r) * D + d;
        sQ[(e / D) * P + d] = r < a.seq ? q[idx] : 0.f;
        sO[(e / D) * P + d] = r < a.seq ? dout[idx] : 0.f;
      }
      if (threadIdx.x < kTile) {
        const int r = i0 + threadIdx.x;
        sL[threadIdx.x] = r < a.seq ? lse[bh * a.seq + r] : 0.f;
        sD[threadIdx.x] = r < a.seq ? delta[bh * a.seq + r] : 0.f;
      }
      __syncthreads();
      if (j >= a.seq) continue;
      const int i = i0 + lane;
      float p = 0.f, ds = 0.f;
      if (i < a.seq && allowed(a.segmentIds, segBase, i, j)) {
        float qk = 0.f, dp = 0.f;
        for (int d = 0; d < D; ++d) {
          qk = fmaf(sQ[lane * P + d], sK[warp * D + d], qk);
          dp = fmaf(sO[lane * P + d], sV[warp * D + d], dp);
        }
        p = expf(qk * a.scale - sL[lane]);
        ds = p * (dp - sD[lane]);
      }
      for (int ii = 0; ii < kTile; ++ii) {
        const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        if (pi == 0.f && dsi == 0.f) continue;
#pragma unroll
        for (int t = 0; t < kPer; ++t) {
          const int d = lane + 32 * t;
          if (d < D) {
            accV[t] = fmaf(pi, sO[ii * P + d], accV[t]);
            accK[t] = fmaf(dsi, sQ[ii * P + d], accK[t]);
          }
        }
      }
    }
  }
  if (j >= a.seq) return;
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    const int d = lane + 32 * t;
    if (d < D) {
      dk[kvBase + int64_t(j) * D + d] = accK[t] * a.scale;
      dv[kvBase + int64_t(j) * D + d] = accV[t];
    }
  }
}

void checkArgs(const AttentionArgs& a) {
  require(a.batch >= 1 && a.heads >= 1 && a.kvHeads >= 1 && a.seq >= 1, "attention: batch, heads, kvHeads, seq must be ≥ 1");
  require(a.heads % a.kvHeads == 0, "attention: heads must be a multiple of kvHeads");
  require(a.headDim >= 1 && a.headDim <= kMaxD, "attention: headDim must be in [1, 128]");
  require(int64_t(a.batch) * a.heads <= 65535, "attention: batch·heads must be ≤ 65535");
}

}  // namespace

void attentionForward(cudaStream_t s, const AttentionArgs& a, const float* q, const float* k, const float* v, float* out,
                      float* lse) {
  checkArgs(a);
  const size_t smem = sizeof(float) * (2 * kTile * (a.headDim + 1) + kRows * a.headDim);  // ≤ 37 KB
  dim3 grid((a.seq + kRows - 1) / kRows, a.batch * a.heads);
  attentionForwardKernel<<<grid, kRows * 32, smem, s>>>(a, q, k, v, out, lse);
  QK_LAUNCH_CHECK("attentionForwardKernel");
}

void attentionBackward(cudaStream_t s, const AttentionArgs& a, const float* dout, const float* q, const float* k,
                       const float* v, const float* out, const float* lse, float* dq, float* dk, float* dv, float* scratch) {
  checkArgs(a);
  const int64_t rows = int64_t(a.batch) * a.heads * a.seq;
  attentionDeltaKernel<<<gridFor(rows * 32, 256), 256, 0, s>>>(dout, out, rows, a.headDim, scratch);
  QK_LAUNCH_CHECK("attentionDeltaKernel");
  const size_t smemQ = sizeof(float) * (2 * kTile * (a.headDim + 1) + 2 * kRows * a.headDim);  // ≤ 41 KB
  dim3 gridQ((a.seq + kRows - 1) / kRows, a.batch * a.heads);
  attentionDqKernel<<<gridQ, kRows * 32, smemQ, s>>>(a, q, k, v, dout, lse, scratch, dq);
  QK_LAUNCH_CHECK("attentionDqKernel");
  const size_t smemKV = sizeof(float) * (2 * kTile * (a.headDim + 1) + 2 * kRows * a.headDim + 2 * kTile);  // ≤ 42 KB
  dim3 gridKV((a.seq + kRows - 1) / kRows, a.batch * a.kvHeads);
  attentionDkvKernel<<<gridKV, kRows * 32, smemKV, s>>>(a, q, k, v, dout, lse, scratch, dk, dv);
  QK_LAUNCH_CHECK("attentionDkvKernel");
}

}  // namespace qk
