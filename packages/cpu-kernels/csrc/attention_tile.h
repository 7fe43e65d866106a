// The attention tile kernels, written against vec_math.h's V and included by one TU per ISA.
// No standard-library templates here: this code is compiled with AVX-512 in one TU, and a shared
// inline/template instantiation could otherwise leak AVX-512 code into baseline callers.
//
// Forward (per batch, head, query tile of kAttnBr rows), FlashAttention-2 style:
//   for each key tile j ≤ the causal limit (and ≥ the sliding window's start, when one is set):
//   S = scale·Q Kᵀ (masked), online softmax
//   (running max m, running sum l, O rescaled by exp(m_old − m_new)), O += P V;
//   finally O /= l, lse = m + log l. Only O and lse leave the tile.
// Backward (per batch, kv head; the thread owns dq of the query heads sharing it, so no races; when
// there are few (batch, kv head) pairs, attention.cc splits each pair's key tiles into a shape-determined
// number of parts instead, each accumulating dq into a private buffer that is summed after in part order):
//   for each key tile j: for each query head of the group and query tile i ≥ j (and within the window):
//   P = exp(scale·Q Kᵀ − lse) recomputed, dV_j += Pᵀ dO, dP = dO Vᵀ, dS = P∘(dP − D)·scale,
//   dQ_i += dS K_j, dK_j += dSᵀ Q_i, with D = rowsum(dO∘O) computed once per row.
// All products go through one register-blocked micro-kernel: C[r][:] += Σ_k A(r,k)·B[k][:] with
// B row-major and A read through strides (so Aᵀ costs nothing), which covers Q Kᵀ (with K
// transposed once per key tile), P V, Pᵀ dO, dS K and dSᵀ Q.
#pragma once
#include "attention.h"
#include "vec_math.h"

namespace qlora {
namespace QLORA_NS {
namespace {

// C rows per register block: 4 × 4 zmm on AVX-512 (16 of 32 registers), 6 × 2 ymm on AVX2 (12 of 16: with
// 8 accumulators, two FMA pipes of latency 4 had no slack; 6 rows made the layer-shape attention faster),
// 4 × 2 xmm on SSE.
constexpr int kRB = V::W == 8 ? 6 : 4;
constexpr int kNV = V::W == 16 ? 4 : 2;  // vectors per C row block: 4 zmm (64 floats) / 2 ymm / 2 xmm

template <int RB, int NV>
QLORA_INLINE void gemm_block(float* C, int64_t ldc, const float* A, int64_t ars, int64_t aks, const float* B,
                             int64_t ldb, int64_t K) {
  V::R acc[RB][NV];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = V::load(C + r * ldc + v * V::W);
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    V::R bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::W);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      V::R a = V::set1(A[r * ars + k * aks]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(a, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) V::store(C + r * ldc + v * V::W, acc[r][v]);
}

template <int NV>
QLORA_INLINE void gemm_cols(float* C, int64_t ldc, const float* A, int64_t ars, int64_t aks, const float* B,
                            int64_t ldb, int64_t R, int64_t K) {
  int64_t r = 0;
  for (; r + kRB <= R; r += kRB) gemm_block<kRB, NV>(C + r * ldc, ldc, A + r * ars, ars, aks, B, ldb, K);
  if (kRB > 4 && r + 4 <= R) {  // 64-row tiles leave 4 rows after blocks of 6
    gemm_block<4, NV>(C + r * ldc, ldc, A + r * ars, ars, aks, B, ldb, K);
    r += 4;
  }
  for (; r < R; ++r) gemm_block<1, NV>(C + r * ldc, ldc, A + r * ars, ars, aks, B, ldb, K);
}

// C[r][0:N] += Σ_{k<K} A[r·ars + k·aks] · B[k·ldb + 0:N] for r < R.
void gemm_acc(float* C, int64_t ldc, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
              int64_t R, int64_t K, int64_t N) {
  int64_t n = 0;
  for (; n + kNV * V::W <= N; n += kNV * V::W) gemm_cols<kNV>(C + n, ldc, A, ars, aks, B + n, ldb, R, K);
  for (; n + V::W <= N; n += V::W) gemm_cols<1>(C + n, ldc, A, ars, aks, B + n, ldb, R, K);
  for (; n < N; ++n)  // column tail (head dims / tiles that are not a multiple of the vector width)
    for (int64_t r = 0; r < R; ++r) {
      float s = C[r * ldc + n];
      for (int64_t k = 0; k < K; ++k) s += A[r * ars + k * aks] * B[k * ldb + n];
      C[r * ldc + n] = s;
    }
}

void zero(float* p, int64_t n) {
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) V::store(p + i, V::zero());
  for (; i < n; ++i) p[i] = 0.0f;
}

// dst[c][j] = src[j·ld + c] for j < rows, c < d (dst rows kAttnBc apart).
void transpose(float* dst, const float* src, int64_t rows, int64_t ld, int64_t d) {
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t c = 0; c < d; ++c) dst[c * kAttnBc + j] = src[j * ld + c];
}

// row[j] = exp(row[j]·mul − shift) for j < n, in place; returns the sum.
float exp_row(float* row, int64_t n, float mul, float shift) {
  const V::R vm = V::set1(mul), vs = V::set1(shift);
  V::R acc = V::zero();
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    V::R e = vexp(V::sub(V::mul(V::load(row + j), vm), vs));
    V::store(row + j, e);
    acc = V::add(acc, e);
  }
  float s = V::hsum(acc);
  for (; j < n; ++j) s += (row[j] = sexp(row[j] * mul - shift));
  return s;
}

// Rows [0, rows) of a strided tile (src rows ld apart) copied to dst rows d apart; returns dst, or src
// itself when the rows are already contiguous.
const float* pack_rows(float* dst, const float* src, int64_t rows, int64_t ld, int64_t d) {
  if (ld == d) return src;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) dst[r * d + c] = src[r * ld + c];
  return dst;
}

float max_row(const float* row, int64_t n) {
  float m = -__builtin_inff();
  int64_t j = 0;
  if (n >= V::W) {
    V::R acc = V::load(row);
    for (j = V::W; j + V::W <= n; j += V::W) acc = V::max(acc, V::load(row + j));
    m = V::hmax(acc);
  }
  for (; j < n; ++j) m = row[j] > m ? row[j] : m;
  return m;
}

void scale_row(float* row, int64_t n, float a) {
  const V::R va = V::set1(a);
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) V::store(row + j, V::mul(V::load(row + j), va));
  for (; j < n; ++j) row[j] *= a;
}

// Number of visible keys of tile [j0, j0+bc) for query i (causal), and the segment mask: entries
// whose segment differs are set to `masked`.
inline int64_t visible(int64_t i, int64_t j0, int64_t bc) {
  int64_t n = i - j0 + 1;
  return n < 0 ? 0 : n > bc ? bc : n;
}
// Keys of the tile starting at j0 before the sliding window of the query at position pos (≤ nv).
inline int64_t window_start(const AttnProblem& p, int64_t pos, int64_t j0, int64_t nv) {
  const int64_t lo = attn_first_key(p, pos) - j0;
  return lo < 0 ? 0 : lo > nv ? nv : lo;
}
void mask_segments(float* row, int64_t n, const int32_t* seg_keys, int32_t seg_query, float masked) {
  for (int64_t j = 0; j < n; ++j)
    if (seg_keys[j] != seg_query) row[j] = masked;
}

void forward_tile(const AttnProblem& p, float* out, float* lse, int64_t task, float* scratch) {
  const int64_t nqb = (p.seq + kAttnBr - 1) / kAttnBr, d = p.d, S = p.seq;
  const int64_t b = task / (p.heads * nqb), h = (task / nqb) % p.heads, i0 = (task % nqb) * kAttnBr;
  const int64_t br = S - i0 < kAttnBr ? S - i0 : kAttnBr;
  const int64_t kvh = h / (p.heads / p.kv_heads);
  const float* Q = p.q + b * p.q_bs + h * p.q_hs + i0 * p.q_rs;
  const float* Vv = p.v + b * p.kv_bs + kvh * p.kv_hs;
  const int32_t* seg = p.seg ? p.seg + b * S : nullptr;
  const float* KTall = p.kt + (b * p.kv_heads + kvh) * attn_key_tiles(p) * d * kAttnBc;
  float* St = scratch;                 // [kAttnBr][kAttnBc]: scores, then probabilities
  float* m = St + kAttnBr * kAttnBc;   // running row max (of scaled scores)
  float* l = m + kAttnBr;              // running row sum
  float* O = l + kAttnBr;              // [kAttnBr][d] unnormalised output
  float* Qpack = O + kAttnBr * d;      // [kAttnBr][d] the query tile, when its rows are strided
  const float* Qt = pack_rows(Qpack, Q, br, p.q_rs, d);  // rows d apart either way
  const float ninf = -__builtin_inff();
  for (int64_t r = 0; r < br; ++r) m[r] = ninf, l[r] = 0.0f;
  zero(O, br * d);
  const int64_t jend = p.offset + i0 + br;  // causal: keys < offset + i0 + br (≤ kv_seq)
  // sliding window: no query of the tile sees keys before its first query's window (whole key tiles skipped)
  const int64_t jstart = attn_first_key(p, p.offset + i0) / kAttnBc * kAttnBc;
  for (int64_t j0 = jstart; j0 < jend; j0 += kAttnBc) {
    const int64_t bc = jend - j0 < kAttnBc ? jend - j0 : kAttnBc;
    const float* KT = KTall + (j0 / kAttnBc) * d * kAttnBc;
    zero(St, br * kAttnBc);
    gemm_acc(St, kAttnBc, Qt, d, 1, KT, kAttnBc, br, d, bc);
    for (int64_t r = 0; r < br; ++r) {
      float* row = St + r * kAttnBc;
      const int64_t nv = visible(p.offset + i0 + r, j0, bc), lo = window_start(p, p.offset + i0 + r, j0, nv);
      for (int64_t j = nv; j < bc; ++j) row[j] = ninf;
      for (int64_t j = 0; j < lo; ++j) row[j] = ninf;
      if (seg) mask_segments(row, nv, seg + j0, seg[i0 + r], ninf);
      const float mx = max_row(row, bc) * p.scale;  // scale > 0 keeps the argmax
      if (mx == ninf) {  // nothing visible in this tile for this row
        zero(row, bc);
        continue;
      }
      const float m_new = mx > m[r] ? mx : m[r];
      const float corr = sexp(m[r] - m_new);  // exp(−inf) = 0 on the first visible tile
      l[r] = l[r] * corr + exp_row(row, bc, p.scale, m_new);
      m[r] = m_new;
      if (corr != 1.0f) scale_row(O + r * d, d, corr);
    }
    gemm_acc(O, d, St, kAttnBc, 1, Vv + j0 * p.kv_rs, p.kv_rs, br, bc, d);
  }
  float* Og = out + b * p.q_bs + h * p.q_hs + i0 * p.q_rs;
  float* L = lse + (b * p.heads + h) * S + i0;
  for (int64_t r = 0; r < br; ++r) {
    const float inv = 1.0f / l[r];
    for (int64_t c = 0; c < d; ++c) Og[r * p.q_rs + c] = O[r * d + c] * inv;
    L[r] = m[r] + __builtin_logf(l[r]);
  }
}

float dot(const float* a, const float* b, int64_t n) {
  V::R acc = V::zero();
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) acc = V::fma(V::load(a + i), V::load(b + i), acc);
  float s = V::hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// One (batch, kv head) of the backward over key tiles jt0, jt0 + jstep, ...: dK/dV of those tiles
// are final (written to dk/dv), dQ of the group's query heads is accumulated into dq_group (head g,
// row i at g·dq_hs + i·dq_rs; zeroed here).
void backward_task(const AttnProblem& p, const float* dout, const float* out, const float* lse, float* dq_group,
                   int64_t dq_rs, int64_t dq_hs, float* dk, float* dv, int64_t task, int64_t jt0, int64_t jstep,
                   float* scratch) {
  const int64_t d = p.d, S = p.seq, G = p.heads / p.kv_heads;
  const int64_t b = task / p.kv_heads, kvh = task % p.kv_heads;
  const int32_t* seg = p.seg ? p.seg + b * S : nullptr;
  float* KT = scratch;                  // [d][kAttnBc]
  float* VT = KT + d * kAttnBc;         // [d][kAttnBc]
  float* P = VT + d * kAttnBc;          // [kAttnBr][kAttnBc]
  float* dS = P + kAttnBr * kAttnBc;    // [kAttnBr][kAttnBc]: dP, then dS
  float* dK = dS + kAttnBr * kAttnBc;   // [kAttnBc][d]
  float* dV = dK + kAttnBc * d;         // [kAttnBc][d]
  float* D = dV + kAttnBc * d;          // [G][S]
  float* Qpack = D + G * S;             // [kAttnBr][d] packed query tile (strided layouts only)
  float* dOpack = Qpack + kAttnBr * d;  // [kAttnBr][d] packed dout tile
  for (int64_t g = 0; g < G; ++g) {
    const int64_t off = b * p.q_bs + (kvh * G + g) * p.q_hs;
    for (int64_t i = 0; i < S; ++i) D[g * S + i] = dot(dout + off + i * p.q_rs, out + off + i * p.q_rs, d);
    for (int64_t i = 0; i < S; ++i) zero(dq_group + g * dq_hs + i * dq_rs, d);
  }
  const int64_t KS = p.kv_seq;
  const float* K = p.k + b * p.kv_bs + kvh * p.kv_hs;
  const float* Vv = p.v + b * p.kv_bs + kvh * p.kv_hs;
  for (int64_t j0 = jt0 * kAttnBc; j0 < KS; j0 += jstep * kAttnBc) {
    const int64_t bc = KS - j0 < kAttnBc ? KS - j0 : kAttnBc;
    transpose(KT, K + j0 * p.kv_rs, bc, p.kv_rs, d);
    transpose(VT, Vv + j0 * p.kv_rs, bc, p.kv_rs, d);
    zero(dK, bc * d);
    zero(dV, bc * d);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t qoff = b * p.q_bs + (kvh * G + g) * p.q_hs, qrs = p.q_rs;
      const float* Qh = p.q + qoff;
      const float* dOh = dout + qoff;
      float* dQh = dq_group + g * dq_hs;
      const float* Lh = lse + (b * p.heads + kvh * G + g) * S;
      const float* Dh = D + g * S;
      // the first query that sees key j0 is j0 − offset (rounded down to its tile)
      const int64_t first = j0 - p.offset > 0 ? j0 - p.offset : 0;
      // and with a sliding window, the last is the one whose window still reaches key j0 + bc − 1
      const int64_t last_end = p.window > 0 ? j0 + bc - 1 + p.window - p.offset : S;
      const int64_t iend = last_end < S ? last_end : S;
      for (int64_t i0 = (first / kAttnBr) * kAttnBr; i0 < iend; i0 += kAttnBr) {
        const int64_t br = S - i0 < kAttnBr ? S - i0 : kAttnBr;
        const float* Qi = pack_rows(Qpack, Qh + i0 * qrs, br, qrs, d);
        const float* dOi = pack_rows(dOpack, dOh + i0 * qrs, br, qrs, d);
        const int64_t ld = d;  // Qi / dOi rows are d apart (packed, or contiguous already)
        zero(P, br * kAttnBc);
        gemm_acc(P, kAttnBc, Qi, ld, 1, KT, kAttnBc, br, d, bc);
        for (int64_t r = 0; r < br; ++r) {
          float* row = P + r * kAttnBc;
          const int64_t nv = visible(p.offset + i0 + r, j0, bc), lo = window_start(p, p.offset + i0 + r, j0, nv);
          exp_row(row, nv, p.scale, Lh[i0 + r]);
          for (int64_t j = nv; j < bc; ++j) row[j] = 0.0f;
          for (int64_t j = 0; j < lo; ++j) row[j] = 0.0f;
          if (seg) mask_segments(row, nv, seg + j0, seg[i0 + r], 0.0f);
        }
        gemm_acc(dV, d, P, 1, kAttnBc, dOi, ld, bc, br, d);  // dV += Pᵀ dO
        zero(dS, br * kAttnBc);
        gemm_acc(dS, kAttnBc, dOi, ld, 1, VT, kAttnBc, br, d, bc);  // dP = dO Vᵀ
        for (int64_t r = 0; r < br; ++r) {
          float* ds = dS + r * kAttnBc;
          const float* pr = P + r * kAttnBc;
          const V::R vD = V::set1(Dh[i0 + r]), vs = V::set1(p.scale);
          int64_t j = 0;
          for (; j + V::W <= bc; j += V::W)
            V::store(ds + j, V::mul(V::mul(V::load(pr + j), V::sub(V::load(ds + j), vD)), vs));
          for (; j < bc; ++j) ds[j] = pr[j] * (ds[j] - Dh[i0 + r]) * p.scale;
        }
        gemm_acc(dQh + i0 * dq_rs, dq_rs, dS, kAttnBc, 1, K + j0 * p.kv_rs, p.kv_rs, br, bc, d);  // dQ += dS K
        gemm_acc(dK, d, dS, 1, kAttnBc, Qi, ld, bc, br, d);                                     // dK += dSᵀ Q
      }
    }
    float* dKg = dk + b * p.kv_bs + kvh * p.kv_hs + j0 * p.kv_rs;
    float* dVg = dv + b * p.kv_bs + kvh * p.kv_hs + j0 * p.kv_rs;
    for (int64_t j = 0; j < bc; ++j)
      for (int64_t c = 0; c < d; ++c) dKg[j * p.kv_rs + c] = dK[j * d + c], dVg[j * p.kv_rs + c] = dV[j * d + c];
  }
}

}  // namespace

void attn_forward(const AttnProblem& p, float* out, float* lse, int64_t t0, int64_t t1, float* scratch) {
  for (int64_t t = t0; t < t1; ++t) forward_tile(p, out, lse, t, scratch);
}

void attn_backward(const AttnProblem& p, const float* dout, const float* out, const float* lse, float* dq, float* dk,
                   float* dv, int64_t t0, int64_t t1, float* scratch) {
  for (int64_t t = t0; t < t1; ++t) {
    float* dq_group = dq + (t / p.kv_heads) * p.q_bs + (t % p.kv_heads) * (p.heads / p.kv_heads) * p.q_hs;
    backward_task(p, dout, out, lse, dq_group, p.q_rs, p.q_hs, dk, dv, t, 0, 1, scratch);
  }
}

void attn_backward_tiles(const AttnProblem& p, const float* dout, const float* out, const float* lse, float* dq_group,
                         int64_t dq_rs, int64_t dq_hs, float* dk, float* dv, int64_t task, int64_t jt0, int64_t jstep,
                         float* scratch) {
  backward_task(p, dout, out, lse, dq_group, dq_rs, dq_hs, dk, dv, task, jt0, jstep, scratch);
}

}  // namespace QLORA_NS
}  // namespace qlora
