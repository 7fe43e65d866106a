// Cross-entropy over rows of logits [rows, vocab] with i32 labels: loss = lse − logit[label]
// (0 on rows whose label is ignoreIndex), lse saved for backward:
// dlogits = dloss[row] · (exp(logit − lse) − onehot(label)), 0 on ignored rows.
// A label outside [0, vocab) that is not ignoreIndex is a RangeError naming the row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "elementwise_vec.h"
#include "fused_args.h"
#include "pool.h"
#include "registry.h"

namespace qlora {
namespace {

size_t row_grain(int64_t n) { return static_cast<size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n))); }

bool check_labels(Args& a, const int32_t* labels, int64_t rows, int64_t vocab, int32_t ignore) {
  for (int64_t r = 0; r < rows && a.ok(); ++r) {
    int32_t l = labels[r];
    if (l != ignore && (l < 0 || l >= vocab)) {
      std::string what = "labels[" + std::to_string(r) + "] = " + std::to_string(l) + " is outside [0, " +
                         std::to_string(vocab) + ") and is not ignoreIndex; expected";
      a.fail_range("labels", ("valid: " + what + " a class index").c_str());
    }
  }
  return a.ok();
}

// crossEntropy(logits, labels, loss, lse, rows, vocab, ignoreIndex)
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  Args a(info, "crossEntropy");
  int64_t rows = a.count(4, "rows"), vocab = a.count(5, "vocab");
  int32_t ignore = a.int32(6, "ignoreIndex");
  if (a.ok() && vocab == 0) a.fail_range("vocab", "positive");
  const float* logits = a.f32(0, "logits", static_cast<double>(rows) * vocab);
  const int32_t* labels = a.i32(1, "labels", rows);
  float* loss = a.f32(2, "loss", rows);
  float* lse = a.f32(3, "lse", rows);
  if (!a.ok() || !check_labels(a, labels, rows, vocab, ignore)) return a.env().Undefined();
  const VecOps& v = vecops();
  parallel_for(rows, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* x = logits + r * vocab;
      float m = v.max(x, vocab);
      float l = m + std::log(v.exp_sum(x, nullptr, vocab, m));
      lse[r] = l;
      loss[r] = labels[r] == ignore ? 0.0f : l - x[labels[r]];
    }
  }, row_grain(vocab));
  return a.env().Undefined();
}

// crossEntropyBackward(dloss, logits, labels, lse, dlogits, rows, vocab, ignoreIndex)
Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  Args a(info, "crossEntropyBackward");
  int64_t rows = a.count(5, "rows"), vocab = a.count(6, "vocab");
  int32_t ignore = a.int32(7, "ignoreIndex");
  double n = static_cast<double>(rows) * vocab;
  const float* dloss = a.f32(0, "dloss", rows);
  const float* logits = a.f32(1, "logits", n);
  const int32_t* labels = a.i32(2, "labels", rows);
  const float* lse = a.f32(3, "lse", rows);
  float* dlogits = a.f32(4, "dlogits", n);
  if (!a.ok() || !check_labels(a, labels, rows, vocab, ignore)) return a.env().Undefined();
  const VecOps& v = vecops();
  parallel_for(rows, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      float* g = dlogits + r * vocab;
      if (labels[r] == ignore) {
        std::fill(g, g + vocab, 0.0f);
        continue;
      }
      v.exp_sum(logits + r * vocab, g, vocab, lse[r]);
      const float d = dloss[r];
      for (int64_t i = 0; i < vocab; ++i) g[i] *= d;
      g[labels[r]] -= d;
    }
  }, row_grain(vocab));
  return a.env().Undefined();
}

// crossEntropyGradInPlace(logits, labels, loss, rows, vocab, ignoreIndex, zLoss, grad): one row chunk of
// linearCrossEntropy. loss[r] = lse − x[label] + zLoss·lse² (0 on ignored rows); with grad, the logits
// row is overwritten by (1 + 2·zLoss·lse)·softmax − onehot(label) (0 on ignored rows): two passes over
// the row (max, then exp-sum) and one more that writes the gradient where the logits were.
Napi::Value CrossEntropyGradInPlace(const Napi::CallbackInfo& info) {
  Args a(info, "crossEntropyGradInPlace");
  int64_t rows = a.count(3, "rows"), vocab = a.count(4, "vocab");
  int32_t ignore = a.int32(5, "ignoreIndex");
  const float z = static_cast<float>(a.number(6, "zLoss"));
  const bool grad = a.boolean(7, "grad");
  if (a.ok() && vocab == 0) a.fail_range("vocab", "positive");
  if (a.ok() && !(z >= 0.0f)) a.fail_range("zLoss", "a number >= 0");
  float* logits = a.f32(0, "logits", static_cast<double>(rows) * vocab);
  const int32_t* labels = a.i32(1, "labels", rows);
  float* loss = a.f32(2, "loss", rows);
  if (!a.ok() || !check_labels(a, labels, rows, vocab, ignore)) return a.env().Undefined();
  const VecOps& v = vecops();
  parallel_for(rows, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      float* x = logits + r * vocab;
      if (labels[r] == ignore) {
        loss[r] = 0.0f;
        if (grad) std::fill(x, x + vocab, 0.0f);
        continue;
      }
      const float m = v.max(x, vocab);
      const float l = m + std::log(v.exp_sum(x, nullptr, vocab, m));
      loss[r] = l - x[labels[r]] + z * l * l;
      if (!grad) continue;
      v.exp_sum(x, x, vocab, l);  // softmax, in place
      if (z != 0.0f) {
        const float k = 1.0f + 2.0f * z * l;
        for (int64_t i = 0; i < vocab; ++i) x[i] *= k;
      }
      x[labels[r]] -= 1.0f;
    }
  }, row_grain(vocab));
  return a.env().Undefined();
}

Register reg_xent("crossEntropy", CrossEntropy);
Register reg_xent_grad("crossEntropyGradInPlace", CrossEntropyGradInPlace);
Register reg_xent_bwd("crossEntropyBackward", CrossEntropyBackward);

}  // namespace
}  // namespace qlora
