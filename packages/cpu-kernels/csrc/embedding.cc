// Embedding gather and its backward (scatter-add into a zeroed [vocab, dim] gradient). Ids are
// validated first: an id outside [0, vocab) is a RangeError naming its index. The gather also reads
// bf16/f16 tables (embeddingHalf): only the gathered rows are widened, never the whole table.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "elementwise_dtype.h"
#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

bool check_ids(Args& a, const int32_t* ids, int64_t count, int64_t vocab) {
  for (int64_t i = 0; i < count && a.ok(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      std::string what = "ids in [0, " + std::to_string(vocab) + "), but ids[" + std::to_string(i) +
                         "] = " + std::to_string(ids[i]);
      a.fail_range("ids", what.c_str());
    }
  }
  return a.ok();
}

// embedding(weight, ids, out, count, dim, vocab)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Args a(info, "embedding");
  int64_t count = a.count(3, "count"), dim = a.count(4, "dim"), vocab = a.count(5, "vocab");
  const float* w = a.f32(0, "weight", static_cast<double>(vocab) * dim);
  const int32_t* ids = a.i32(1, "ids", count);
  float* out = a.f32(2, "out", static_cast<double>(count) * dim);
  if (!a.ok() || !check_ids(a, ids, count, vocab)) return a.env().Undefined();
  parallel_for(count, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) std::memcpy(out + i * dim, w + static_cast<int64_t>(ids[i]) * dim, dim * sizeof(float));
  }, static_cast<size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim))));
  return a.env().Undefined();
}

// embeddingHalf(weight: Uint16Array, bf16: boolean, ids, out, count, dim, vocab): weight holds bf16 (or f16)
// bit patterns; each gathered row is widened to f32 into out.
Napi::Value EmbeddingHalf(const Napi::CallbackInfo& info) {
  Args a(info, "embeddingHalf");
  const bool bf16 = a.boolean(1, "bf16");
  int64_t count = a.count(4, "count"), dim = a.count(5, "dim"), vocab = a.count(6, "vocab");
  const uint16_t* w = a.u16(0, "weight", static_cast<double>(vocab) * dim);
  const int32_t* ids = a.i32(2, "ids", count);
  float* out = a.f32(3, "out", static_cast<double>(count) * dim);
  if (!a.ok() || !check_ids(a, ids, count, vocab)) return a.env().Undefined();
  parallel_for(count, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) {
      const uint16_t* src = w + static_cast<int64_t>(ids[i]) * dim;
      float* dst = out + i * dim;
      if (bf16)
        for (int64_t c = 0; c < dim; ++c) dst[c] = bf16_to_f32(src[c]);
      else
        for (int64_t c = 0; c < dim; ++c) dst[c] = f16_to_f32(src[c]);
    }
  }, static_cast<size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim))));
  return a.env().Undefined();
}

// embeddingBackward(dy, ids, dweight, count, dim, vocab): dweight must arrive zero-filled.
// Threads split the columns, so each owns a slice of every row: no races, ids order preserved.
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  Args a(info, "embeddingBackward");
  int64_t count = a.count(3, "count"), dim = a.count(4, "dim"), vocab = a.count(5, "vocab");
  const float* dy = a.f32(0, "dy", static_cast<double>(count) * dim);
  const int32_t* ids = a.i32(1, "ids", count);
  float* dw = a.f32(2, "dweight", static_cast<double>(vocab) * dim);
  if (!a.ok() || !check_ids(a, ids, count, vocab)) return a.env().Undefined();
  size_t grain = static_cast<size_t>(std::max<int64_t>(16, 16384 / std::max<int64_t>(1, count)));
  parallel_for(dim, [&](size_t c0, size_t c1) {
    for (int64_t i = 0; i < count; ++i) {
      float* row = dw + static_cast<int64_t>(ids[i]) * dim;
      const float* g = dy + i * dim;
      for (size_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  }, grain);
  return a.env().Undefined();
}

Register reg_embedding("embedding", Embedding);
Register reg_embedding_half("embeddingHalf", EmbeddingHalf);
Register reg_embedding_bwd("embeddingBackward", EmbeddingBackward);

}  // namespace
}  // namespace qlora
