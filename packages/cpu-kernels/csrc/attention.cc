// N-API entry points of causal attention: argument checks, ISA dispatch, and the thread split
// (forward over (batch, head, query tile), backward over (batch, kv head)). The math is in
// attention_tile.h.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "elementwise_vec.h"
#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

// Reads batch, heads, kvHeads, seq, headDim, scale starting at argument `at`, then the optional kvSeq
// (default seq), layout (0 = [batch, heads, seq, d], 1 = [batch, seq, heads, d]; default 0) and sliding
// window (0 = none, the default).
AttnProblem read_problem(Args& a, size_t at) {
  AttnProblem p{};
  p.batch = a.count(at, "batch");
  p.heads = a.count(at + 1, "heads");
  p.kv_heads = a.count(at + 2, "kvHeads");
  p.seq = a.count(at + 3, "seq");
  p.d = a.count(at + 4, "headDim");
  p.scale = static_cast<float>(a.number(at + 5, "scale"));
  p.kv_seq = a.is_null(at + 6) ? p.seq : a.count(at + 6, "kvSeq");
  const int64_t layout = a.is_null(at + 7) ? 0 : a.count(at + 7, "layout");
  p.window = a.is_null(at + 8) ? 0 : a.count(at + 8, "window");
  if (a.ok() && (p.kv_heads == 0 || p.heads % p.kv_heads != 0)) a.fail_range("kvHeads", "a positive divisor of heads");
  if (a.ok() && p.d == 0) a.fail_range("headDim", "positive");
  if (a.ok() && !(p.scale > 0)) a.fail_range("scale", "a positive number");
  if (a.ok() && p.kv_seq < p.seq) a.fail_range("kvSeq", "at least seq");
  if (a.ok() && layout > 1) a.fail_range("layout", "0 (batch, heads, seq, d) or 1 (batch, seq, heads, d)");
  p.offset = p.kv_seq - p.seq;
  const bool bshd = layout == 1;
  p.q_rs = bshd ? p.heads * p.d : p.d;
  p.q_hs = bshd ? p.d : p.seq * p.d;
  p.q_bs = p.heads * p.seq * p.d;
  p.kv_rs = bshd ? p.kv_heads * p.d : p.d;
  p.kv_hs = bshd ? p.d : p.kv_seq * p.d;
  p.kv_bs = p.kv_heads * p.kv_seq * p.d;
  return p;
}

void read_inputs(Args& a, AttnProblem& p, size_t q, size_t seg) {
  const double nq = static_cast<double>(p.batch) * p.heads * p.seq * p.d;
  const double nkv = static_cast<double>(p.batch) * p.kv_heads * p.kv_seq * p.d;
  p.q = a.f32(q, "q", nq);
  p.k = a.f32(q + 1, "k", nkv);
  p.v = a.f32(q + 2, "v", nkv);
  p.seg = a.is_null(seg) ? nullptr : a.i32(seg, "segmentIds", static_cast<double>(p.batch) * p.seq);
  if (a.ok() && p.seg && p.offset != 0) a.fail_range("segmentIds", "absent when kvSeq != seq (a KV cache)");
}

// Runs task(t, scratch) for t in [0, n) with dynamic scheduling: every pool thread takes the next
// task from a shared counter, so the causal triangle's uneven tiles and a descheduled thread (a busy
// machine) do not leave the others waiting at the end of a static split.
template <typename Fn>
void for_each_task(int64_t n, size_t scratch_floats, const Fn& task) {
  std::atomic<int64_t> next{0};
  parallel_for(static_cast<size_t>(std::min<int64_t>(num_threads(), n)), [&](size_t, size_t) {
    std::vector<float> buf(scratch_floats);
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < n;) task(t, buf.data());
  });
}

// K tile by tile into [batch][kv head][tile][d][kAttnBc] (the forward's B operand of Q·Kᵀ).
void transpose_keys(const AttnProblem& p, float* kt) {
  const int64_t tiles = attn_key_tiles(p), d = p.d;
  parallel_for(p.batch * p.kv_heads * tiles, [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      const int64_t bh = static_cast<int64_t>(t) / tiles, j0 = (static_cast<int64_t>(t) % tiles) * kAttnBc;
      const int64_t bc = std::min(kAttnBc, p.kv_seq - j0);
      const float* src = p.k + (bh / p.kv_heads) * p.kv_bs + (bh % p.kv_heads) * p.kv_hs + j0 * p.kv_rs;
      float* dst = kt + static_cast<int64_t>(t) * d * kAttnBc;
      for (int64_t j = 0; j < bc; ++j)
        for (int64_t c = 0; c < d; ++c) dst[c * kAttnBc + j] = src[j * p.kv_rs + c];
    }
  });
}

// attentionForward(q, k, v, segmentIds|null, out, lse, batch, heads, kvHeads, seq, headDim, scale[, kvSeq, layout,
//                  window])
Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  Args a(info, "attentionForward");
  AttnProblem p = read_problem(a, 6);
  read_inputs(a, p, 0, 3);
  float* out = a.f32(4, "out", static_cast<double>(p.batch) * p.heads * p.seq * p.d);
  float* lse = a.f32(5, "lse", static_cast<double>(p.batch) * p.heads * p.seq);
  if (!a.ok()) return a.env().Undefined();
  auto fn = fused_isa_level() == 2 ? avx512::attn_forward : fused_isa_level() == 1 ? avx2::attn_forward : sse::attn_forward;
  std::vector<float> kt(attn_kt_floats(p));
  transpose_keys(p, kt.data());
  p.kt = kt.data();
  const size_t scratch = attn_forward_scratch(p);
  for_each_task(attn_forward_tasks(p), scratch, [&](int64_t t, float* buf) { fn(p, out, lse, t, t + 1, buf); });
  return a.env().Undefined();
}

// dq of a GQA group is a sum over key tiles. With few (batch, kv head) pairs, each pair's key tiles are
// split round-robin (which balances the causal triangle) into `parts` subsets, each accumulating a private
// dq that is summed afterwards in part order. `parts` depends on the shape only, never on the thread
// count, so results are bit-identical on any number of threads (test/thread-sweep.test.ts); threads only
// decide who computes which part. kAttnPairTarget bounds the parallelism (and the private dq memory:
// parts x the group's dq) for a single pair.
constexpr int64_t kAttnPairTarget = 8;
int64_t dq_parts(const AttnProblem& p) {
  const int64_t pairs = attn_backward_tasks(p);
  if (pairs >= kAttnPairTarget) return 1;
  return std::max<int64_t>(1, std::min(attn_key_tiles(p), (kAttnPairTarget + pairs - 1) / pairs));
}

void backward_split_keys(const AttnProblem& p, int level, const float* dout, const float* out, const float* lse,
                         float* dq, float* dk, float* dv, size_t scratch) {
  auto fn = level == 2 ? avx512::attn_backward_tiles : level == 1 ? avx2::attn_backward_tiles : sse::attn_backward_tiles;
  const int64_t parts = dq_parts(p);
  const int64_t G = p.heads / p.kv_heads, group = G * p.seq * p.d;
  std::vector<float> partial(static_cast<size_t>(parts * group));
  for (int64_t t = 0; t < attn_backward_tasks(p); ++t) {
    parallel_for(parts, [&](size_t w0, size_t w1) {
      std::vector<float> buf(scratch);
      for (size_t w = w0; w < w1; ++w)
        fn(p, dout, out, lse, partial.data() + w * group, p.d, p.seq * p.d, dk, dv, t, static_cast<int64_t>(w), parts,
           buf.data());
    });
    // the private buffers are [G][seq][d]; dq is in the problem's layout
    float* dq_group = dq + (t / p.kv_heads) * p.q_bs + (t % p.kv_heads) * G * p.q_hs;
    parallel_for(group, [&](size_t i0, size_t i1) {
      for (size_t i = i0; i < i1; ++i) {
        float s = 0.0f;
        for (int64_t w = 0; w < parts; ++w) s += partial[w * group + i];
        const int64_t g = static_cast<int64_t>(i) / (p.seq * p.d), r = (static_cast<int64_t>(i) / p.d) % p.seq;
        dq_group[g * p.q_hs + r * p.q_rs + static_cast<int64_t>(i) % p.d] = s;
      }
    }, 4096);
  }
}

// attentionBackward(dout, q, k, v, out, lse, segmentIds|null, dq, dk, dv, batch, heads, kvHeads, seq, headDim, scale
//                   [, kvSeq, layout, window])
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  Args a(info, "attentionBackward");
  AttnProblem p = read_problem(a, 10);
  read_inputs(a, p, 1, 6);
  const double nq = static_cast<double>(p.batch) * p.heads * p.seq * p.d;
  const double nkv = static_cast<double>(p.batch) * p.kv_heads * p.kv_seq * p.d;
  const float* dout = a.f32(0, "dout", nq);
  const float* out = a.f32(4, "out", nq);
  const float* lse = a.f32(5, "lse", static_cast<double>(p.batch) * p.heads * p.seq);
  float* dq = a.f32(7, "dq", nq);
  float* dk = a.f32(8, "dk", nkv);
  float* dv = a.f32(9, "dv", nkv);
  if (!a.ok()) return a.env().Undefined();
  const int level = fused_isa_level();
  const size_t scratch = attn_backward_scratch(p);
  const int64_t tasks = attn_backward_tasks(p);
  if (dq_parts(p) == 1) {
    auto fn = level == 2 ? avx512::attn_backward : level == 1 ? avx2::attn_backward : sse::attn_backward;
    for_each_task(tasks, scratch, [&](int64_t t, float* buf) { fn(p, dout, out, lse, dq, dk, dv, t, t + 1, buf); });
  } else {
    backward_split_keys(p, level, dout, out, lse, dq, dk, dv, scratch);
  }
  return a.env().Undefined();
}

Register reg_attn("attentionForward", AttentionForward);
Register reg_attn_bwd("attentionBackward", AttentionBackward);

}  // namespace
}  // namespace qlora
