// Flash-attention style causal attention on the CPU: declarations shared by attention.cc (N-API,
// validation, threading) and the per-ISA tile kernels (attention_tile.h compiled three times).
#pragma once
#include <cstddef>
#include <cstdint>

namespace qlora {

struct AttnProblem {
  int64_t batch, heads, kv_heads, seq, d;
  // Keys per sequence (≥ seq) and the causal offset kv_seq − seq: query i sits at position offset + i
  // and sees keys j ≤ offset + i (a KV cache: keys = cached + new).
  int64_t kv_seq, offset;
  // Sliding window (Mistral): the query at position P sees keys P − window < j ≤ P only; 0 = plain causal.
  int64_t window;
  // Element strides of one position (row), one head and one batch: q_* for q, out, dout and dq;
  // kv_* for k, v, dk and dv. Layout "bhsd": row d, head seq·d; layout "bshd": row heads·d, head d.
  int64_t q_rs, q_hs, q_bs, kv_rs, kv_hs, kv_bs;
  float scale;
  const int32_t* seg;  // [batch, seq] segment ids, or null (only when kv_seq == seq)
  const float *q, *k, *v;
  // K transposed tile by tile for the forward: [batch][kv_heads][key tile][d][kAttnBc], built once
  // per call (attention.cc) instead of once per (query tile, key tile) pair.
  const float* kt;
};

// First key visible to the query at position pos: 0, or the start of its sliding window.
inline int64_t attn_first_key(const AttnProblem& p, int64_t pos) {
  return p.window > 0 && pos - p.window + 1 > 0 ? pos - p.window + 1 : 0;
}

constexpr int64_t kAttnBr = 64;  // query rows per tile
constexpr int64_t kAttnBc = 64;  // keys per tile

// Forward tasks are (batch, head, query tile); backward tasks are (batch, kv head).
inline int64_t attn_forward_tasks(const AttnProblem& p) {
  return p.batch * p.heads * ((p.seq + kAttnBr - 1) / kAttnBr);
}
inline int64_t attn_backward_tasks(const AttnProblem& p) { return p.batch * p.kv_heads; }
inline int64_t attn_key_tiles(const AttnProblem& p) { return (p.kv_seq + kAttnBc - 1) / kAttnBc; }
inline size_t attn_kt_floats(const AttnProblem& p) {
  return static_cast<size_t>(p.batch * p.kv_heads * attn_key_tiles(p) * p.d * kAttnBc);
}
// Floats of scratch one thread needs.
// (+ one packed query tile in the forward, packed Q and dO tiles in the backward: strided [b, s, h, d] rows
// are 4 KiB apart for 16 heads of 64, which maps every row of a tile to the same L1 sets)
inline size_t attn_forward_scratch(const AttnProblem& p) {
  return static_cast<size_t>(kAttnBr * kAttnBc + 2 * kAttnBr + 2 * kAttnBr * p.d);
}
inline size_t attn_backward_scratch(const AttnProblem& p) {
  return static_cast<size_t>(4 * p.d * kAttnBc + 2 * kAttnBr * kAttnBc + (p.heads / p.kv_heads) * p.seq +
                             2 * kAttnBr * p.d);
}

#define QLORA_ATTN_DECLARE(ns)                                                                                \
  namespace ns {                                                                                              \
  void attn_forward(const AttnProblem& p, float* out, float* lse, int64_t t0, int64_t t1, float* scratch);    \
  void attn_backward(const AttnProblem& p, const float* dout, const float* out, const float* lse, float* dq,  \
                     float* dk, float* dv, int64_t t0, int64_t t1, float* scratch);                           \
  void attn_backward_tiles(const AttnProblem& p, const float* dout, const float* out, const float* lse,       \
                           float* dq_group, int64_t dq_rs, int64_t dq_hs, float* dk, float* dv, int64_t task, \
                           int64_t jt0, int64_t jstep, float* scratch);                                       \
  }
QLORA_ATTN_DECLARE(avx512)
QLORA_ATTN_DECLARE(avx2)
QLORA_ATTN_DECLARE(sse)
#undef QLORA_ATTN_DECLARE

}  // namespace qlora
