// N-API wrappers of the kernels (csrc/kernels/kernels.h). Every handle argument is checked against
// the bytes the op will touch before anything is launched; all work goes on the compute stream.
#include "../kernels/kernels.h"
#include "../runtime/device.h"
#include "../runtime/dtype.h"
#include "guard.h"
#include "registry.h"

namespace qn {
namespace {

constexpr int64_t kMaxLen = (int64_t(1) << 40);
using qk::dtypeSize;

cudaStream_t stream() { return qk::Runtime::get().compute(); }
int64_t len(const Napi::CallbackInfo& info, size_t i, const char* name) { return integer(info, i, name, 0, kMaxLen); }
int dim(const Napi::CallbackInfo& info, size_t i, const char* name) { return int(integer(info, i, name, 0, INT32_MAX)); }
int dtype(const Napi::CallbackInfo& info, size_t i, const char* name) { return int(integer(info, i, name, 0, 5)); }
template <class T>
T* ptr(const Napi::CallbackInfo& info, size_t i, size_t bytes, const char* name) {
  return static_cast<T*>(buffer(info, i, bytes, name).ptr);
}
/** Optional handle: 0 means absent. */
template <class T>
const T* optPtr(const Napi::CallbackInfo& info, size_t i, size_t bytes, const char* name) {
  if (integer(info, i, name, 0, UINT32_MAX) == 0) return nullptr;
  return ptr<const T>(info, i, bytes, name);
}
qk::View view(const Napi::CallbackInfo& info, size_t shapeI, size_t stridesI, size_t offsetI, const char* name) {
  qk::require(info[shapeI].IsArray() && info[stridesI].IsArray(), std::string(name) + ": shape and strides must be arrays");
  Napi::Array shape = info[shapeI].As<Napi::Array>(), strides = info[stridesI].As<Napi::Array>();
  qk::require(shape.Length() <= qk::kMaxRank && shape.Length() == strides.Length(), std::string(name) + ": rank must be ≤ 8 and match strides");
  qk::View v;
  v.rank = int(shape.Length());
  for (int d = 0; d < v.rank; ++d) {
    v.shape[d] = shape.Get(uint32_t(d)).As<Napi::Number>().Int64Value();
    v.strides[d] = strides.Get(uint32_t(d)).As<Napi::Number>().Int64Value();
    qk::require(v.shape[d] >= 0, std::string(name) + ": negative extent");
  }
  v.offset = integer(info, offsetI, name, 0, kMaxLen);
  return v;
}
int64_t numel(const qk::View& v) {
  int64_t n = 1;
  for (int d = 0; d < v.rank; ++d) n *= v.shape[d];
  return n;
}
/** Largest element index a view reads + 1 (strides may be 0 for broadcasting, never negative). */
int64_t extent(const qk::View& v) {
  if (numel(v) == 0) return 0;
  int64_t last = v.offset;
  for (int d = 0; d < v.rank; ++d) {
    qk::require(v.strides[d] >= 0, "view: negative strides are not supported");
    last += (v.shape[d] - 1) * v.strides[d];
  }
  return last + 1;
}

Napi::Value Fill(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int dt = dtype(info, 1, "dtype");
    const int64_t n = len(info, 2, "length");
    qk::fill(stream(), ptr<void>(info, 0, n * dtypeSize(dt), "out"), dt, n, number(info, 3, "value"));
    return info.Env().Undefined();
  });
}

// copy(src, srcDtype, shape, strides, offset, dst, dstDtype)
Napi::Value Copy(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int sd = dtype(info, 1, "srcDtype"), dd = dtype(info, 6, "dstDtype");
    const qk::View v = view(info, 2, 3, 4, "copy view");
    const void* src = ptr<const void>(info, 0, extent(v) * dtypeSize(sd), "src");
    qk::copyStrided(stream(), src, sd, v, ptr<void>(info, 5, numel(v) * dtypeSize(dd), "dst"), dd);
    return info.Env().Undefined();
  });
}

// copyInPlace(dst, dstDtype, shape, dstStrides, dstOffset, src, srcDtype, srcStrides, srcOffset)
Napi::Value CopyInPlace(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int dd = dtype(info, 1, "dstDtype"), sd = dtype(info, 6, "srcDtype");
    const qk::View dv = view(info, 2, 3, 4, "dst view");
    const qk::View sv = view(info, 2, 7, 8, "src view");
    void* dst = ptr<void>(info, 0, extent(dv) * dtypeSize(dd), "dst");
    const void* src = ptr<const void>(info, 5, extent(sv) * dtypeSize(sd), "src");
    qk::copyInPlace(stream(), dst, dd, dv, src, sd, sv);
    return info.Env().Undefined();
  });
}

Napi::Value Unary(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int op = int(integer(info, 0, "op", 0, 12));
    const int64_t n = len(info, 3, "length");
    qk::unary(stream(), op, ptr<const float>(info, 1, n * 4, "x"), ptr<float>(info, 2, n * 4, "out"), n);
    return info.Env().Undefined();
  });
}

// binary(op, a, shape, aStrides, aOffset, b, bStrides, bOffset, out)
Napi::Value Binary(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int op = int(integer(info, 0, "op", 0, 9));
    const qk::View av = view(info, 2, 3, 4, "a view");
    const qk::View bv = view(info, 2, 6, 7, "b view");
    const float* a = ptr<const float>(info, 1, extent(av) * 4, "a");
    const float* b = ptr<const float>(info, 5, extent(bv) * 4, "b");
    qk::binary(stream(), op, a, av, b, bv, ptr<float>(info, 8, numel(av) * 4, "out"));
    return info.Env().Undefined();
  });
}

Napi::Value Reduce(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int op = int(integer(info, 0, "op", 0, 2));
    const int64_t outer = len(info, 2, "outer"), size = len(info, 3, "size"), inner = len(info, 4, "inner");
    qk::reduce(stream(), op, ptr<const float>(info, 1, outer * size * inner * 4, "x"), outer, size, inner,
               ptr<float>(info, 5, outer * inner * 4, "out"));
    return info.Env().Undefined();
  });
}

// gemm(a, b, c, batch, m, n, k, transA, transB, aBatchStride(-1 default), bBatchStride, dtype)
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    qk::GemmArgs g;
    g.batch = int(integer(info, 3, "batch", 1, 65535));
    g.m = dim(info, 4, "m");
    g.n = dim(info, 5, "n");
    g.k = dim(info, 6, "k");
    g.transA = boolean(info, 7, "transA");
    g.transB = boolean(info, 8, "transB");
    g.aBatchStride = integer(info, 9, "aBatchStride", -1, kMaxLen);
    g.bBatchStride = integer(info, 10, "bBatchStride", -1, kMaxLen);
    g.dtype = dtype(info, 11, "dtype");
    const int64_t es = dtypeSize(g.dtype);
    const int64_t as = g.aBatchStride < 0 ? int64_t(g.m) * g.k : g.aBatchStride;
    const int64_t bs = g.bBatchStride < 0 ? int64_t(g.k) * g.n : g.bBatchStride;
    const void* a = ptr<const void>(info, 0, ((g.batch - 1) * as + int64_t(g.m) * g.k) * es, "a");
    const void* b = ptr<const void>(info, 1, ((g.batch - 1) * bs + int64_t(g.k) * g.n) * es, "b");
    qk::gemm(stream(), g, a, b, ptr<float>(info, 2, int64_t(g.batch) * g.m * g.n * 4, "out"));
    return info.Env().Undefined();
  });
}

Napi::Value Quantize4bit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int dt = dtype(info, 1, "dtype");
    const int64_t n = integer(info, 2, "n", 1, INT32_MAX);
    const int bs = int(integer(info, 3, "blocksize", 16, 4096));
    const bool fp4 = boolean(info, 4, "fp4");
    qk::quantize4bit(stream(), ptr<const void>(info, 0, n * dtypeSize(dt), "x"), dt, n, bs, fp4,
                     ptr<uint8_t>(info, 5, (n + 1) / 2, "codes"), ptr<float>(info, 6, (n + bs - 1) / bs * 4, "absmax"));
    return info.Env().Undefined();
  });
}

// Absmax spec at args [i..i+5]: absmax, qabsmax, code, nestedAbsmax (handles, 0 = absent), nestedBlocksize, offset.
qk::Absmax4bit absmaxSpec(const Napi::CallbackInfo& info, size_t i, int64_t blocks) {
  qk::Absmax4bit a;
  const int nbs = int(integer(info, i + 4, "nestedBlocksize", 1, 1 << 20));
  a.absmax = optPtr<float>(info, i, blocks * 4, "absmax");
  if (!a.absmax) {
    a.qabsmax = optPtr<uint8_t>(info, i + 1, blocks, "qabsmax");
    a.code = optPtr<float>(info, i + 2, 256 * 4, "code");
    a.nestedAbsmax = optPtr<float>(info, i + 3, (blocks + nbs - 1) / nbs * 4, "nestedAbsmax");
  }
  a.nestedBlocksize = nbs;
  a.offset = float(number(info, i + 5, "offset"));
  return a;
}

// dequantize4bit(codes, n, blocksize, fp4, absmax, qabsmax, code, nested, nestedBlocksize, offset, out, outDtype)
Napi::Value Dequantize4bit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t n = integer(info, 1, "n", 1, INT32_MAX);
    const int bs = int(integer(info, 2, "blocksize", 16, 4096));
    const bool fp4 = boolean(info, 3, "fp4");
    const qk::Absmax4bit a = absmaxSpec(info, 4, (n + bs - 1) / bs);
    const int od = dtype(info, 11, "outDtype");
    qk::dequantize4bit(stream(), ptr<const uint8_t>(info, 0, (n + 1) / 2, "codes"), n, bs, fp4, a,
                       ptr<void>(info, 10, n * dtypeSize(od), "out"), od);
    return info.Env().Undefined();
  });
}

// quantizeBlockwise8(x, n, offset, blocksize, code, q, absmax)
Napi::Value QuantizeBlockwise8(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t n = integer(info, 1, "n", 1, INT32_MAX);
    const int bs = int(integer(info, 3, "blocksize", 64, 4096));
    qk::quantizeBlockwise8(stream(), ptr<const float>(info, 0, n * 4, "x"), n, float(number(info, 2, "offset")), bs,
                           ptr<const float>(info, 4, 256 * 4, "code"), ptr<uint8_t>(info, 5, n, "q"),
                           ptr<float>(info, 6, (n + bs - 1) / bs * 4, "absmax"));
    return info.Env().Undefined();
  });
}

// Weight at args [i..i+10]: codes, n, k, blocksize, fp4, absmax spec (6).
qk::Weight4bit weight(const Napi::CallbackInfo& info, size_t i) {
  qk::Weight4bit w;
  w.n = int(integer(info, i + 1, "weight n", 1, INT32_MAX));
  w.k = int(integer(info, i + 2, "weight k", 1, INT32_MAX));
  w.blocksize = int(integer(info, i + 3, "blocksize", 16, 4096));
  w.fp4 = boolean(info, i + 4, "fp4");
  const int64_t count = int64_t(w.n) * w.k;
  w.codes = ptr<const uint8_t>(info, i, (count + 1) / 2, "codes");
  w.absmax = absmaxSpec(info, i + 5, (count + w.blocksize - 1) / w.blocksize);
  return w;
}

// gemm4bit(x, xDtype, m, weight(11), y, yDtype) ; inputGrad: same with dy/dx
template <bool kInputGrad>
Napi::Value Gemm4bit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int xd = dtype(info, 1, "input dtype");
    const int m = int(integer(info, 2, "m", 1, INT32_MAX));
    const qk::Weight4bit w = weight(info, 3);
    const int yd = dtype(info, 15, "output dtype");
    const int inF = kInputGrad ? w.n : w.k, outF = kInputGrad ? w.k : w.n;
    const void* x = ptr<const void>(info, 0, int64_t(m) * inF * dtypeSize(xd), "input");
    void* y = ptr<void>(info, 14, int64_t(m) * outF * dtypeSize(yd), "output");
    if (kInputGrad) qk::gemm4bitInputGrad(stream(), x, xd, m, w, y, yd);
    else qk::gemm4bit(stream(), x, xd, m, w, y, yd);
    return info.Env().Undefined();
  });
}

// gemm4bitF32(x, m, weight(11), y, inputGrad): exact-f32 path, never a whole-weight copy (f32 panels + cuBLAS, or SIMT)
Napi::Value Gemm4bitF32(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int m = int(integer(info, 1, "m", 1, INT32_MAX));
    const qk::Weight4bit w = weight(info, 2);
    const bool inputGrad = boolean(info, 14, "inputGrad");
    const int inF = inputGrad ? w.n : w.k, outF = inputGrad ? w.k : w.n;
    qk::gemm4bitF32(stream(), ptr<const float>(info, 0, int64_t(m) * inF * 4, "input"), m, w,
                    ptr<float>(info, 13, int64_t(m) * outF * 4, "output"), inputGrad);
    return info.Env().Undefined();
  });
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t rows = len(info, 2, "rows");
    const int d = int(integer(info, 3, "dim", 1, INT32_MAX));
    qk::rmsNorm(stream(), ptr<const float>(info, 0, rows * d * 4, "x"), ptr<const float>(info, 1, d * 4, "weight"), rows, d,
                float(number(info, 4, "eps")), ptr<float>(info, 5, rows * d * 4, "y"), ptr<float>(info, 6, rows * 4, "rstd"));
    return info.Env().Undefined();
  });
}

Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t rows = len(info, 4, "rows");
    const int d = int(integer(info, 5, "dim", 1, INT32_MAX));
    qk::rmsNormBackward(stream(), ptr<const float>(info, 0, rows * d * 4, "dy"), ptr<const float>(info, 1, rows * d * 4, "x"),
                        ptr<const float>(info, 2, d * 4, "weight"), ptr<const float>(info, 3, rows * 4, "rstd"), rows, d,
                        ptr<float>(info, 6, rows * d * 4, "dx"), ptr<float>(info, 7, d * 4, "dweight"));
    return info.Env().Undefined();
  });
}

// rope(x, positions, batch, seq, heads, headDim, theta, inverse, y)
Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int b = dim(info, 2, "batch"), s = dim(info, 3, "seq"), h = dim(info, 4, "heads"), d = dim(info, 5, "headDim");
    const int64_t n = int64_t(b) * s * h * d;
    qk::rope(stream(), ptr<const float>(info, 0, n * 4, "x"), ptr<const int32_t>(info, 1, int64_t(b) * s * 4, "positions"), b,
             s, h, d, float(number(info, 6, "theta")), boolean(info, 7, "inverse"), ptr<float>(info, 8, n * 4, "y"));
    return info.Env().Undefined();
  });
}

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t n = len(info, 2, "length");
    qk::swiglu(stream(), ptr<const float>(info, 0, n * 4, "gate"), ptr<const float>(info, 1, n * 4, "up"), n,
               ptr<float>(info, 3, n * 4, "y"));
    return info.Env().Undefined();
  });
}

Napi::Value SwigluBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t n = len(info, 3, "length");
    qk::swigluBackward(stream(), ptr<const float>(info, 0, n * 4, "dy"), ptr<const float>(info, 1, n * 4, "gate"),
                       ptr<const float>(info, 2, n * 4, "up"), n, ptr<float>(info, 4, n * 4, "dgate"),
                       ptr<float>(info, 5, n * 4, "dup"));
    return info.Env().Undefined();
  });
}

Napi::Value Softmax(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t rows = len(info, 1, "rows");
    const int n = int(integer(info, 2, "n", 1, INT32_MAX));
    qk::softmax(stream(), ptr<const float>(info, 0, rows * n * 4, "x"), rows, n, ptr<float>(info, 3, rows * n * 4, "y"));
    return info.Env().Undefined();
  });
}

Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t rows = len(info, 2, "rows");
    const int n = int(integer(info, 3, "n", 1, INT32_MAX));
    qk::softmaxBackward(stream(), ptr<const float>(info, 0, rows * n * 4, "dy"), ptr<const float>(info, 1, rows * n * 4, "y"),
                        rows, n, ptr<float>(info, 4, rows * n * 4, "dx"));
    return info.Env().Undefined();
  });
}

// crossEntropy(logits, labels, rows, vocab, ignoreIndex, loss, lse)
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t rows = len(info, 2, "rows");
    const int v = int(integer(info, 3, "vocab", 1, INT32_MAX));
    const int ignore = int(integer(info, 4, "ignoreIndex", INT32_MIN, INT32_MAX));
    qk::crossEntropy(stream(), ptr<const float>(info, 0, rows * v * 4, "logits"), ptr<const int32_t>(info, 1, rows * 4, "labels"),
                     rows, v, ignore, ptr<float>(info, 5, rows * 4, "loss"), ptr<float>(info, 6, rows * 4, "lse"));
    return info.Env().Undefined();
  });
}

// crossEntropyBackward(dloss, logits, labels, lse, rows, vocab, ignoreIndex, dlogits)
Napi::Value CrossEntropyBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t rows = len(info, 4, "rows");
    const int v = int(integer(info, 5, "vocab", 1, INT32_MAX));
    const int ignore = int(integer(info, 6, "ignoreIndex", INT32_MIN, INT32_MAX));
    qk::crossEntropyBackward(stream(), ptr<const float>(info, 0, rows * 4, "dloss"), ptr<const float>(info, 1, rows * v * 4, "logits"),
                             ptr<const int32_t>(info, 2, rows * 4, "labels"), ptr<const float>(info, 3, rows * 4, "lse"), rows, v,
                             ignore, ptr<float>(info, 7, rows * v * 4, "dlogits"));
    return info.Env().Undefined();
  });
}

// embedding(weight, ids, count, dim, vocab, out)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t count = len(info, 2, "count");
    const int d = int(integer(info, 3, "dim", 1, INT32_MAX)), v = int(integer(info, 4, "vocab", 1, INT32_MAX));
    qk::embedding(stream(), ptr<const float>(info, 0, int64_t(v) * d * 4, "weight"), ptr<const int32_t>(info, 1, count * 4, "ids"),
                  count, d, v, ptr<float>(info, 5, count * d * 4, "out"));
    return info.Env().Undefined();
  });
}

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t count = len(info, 2, "count");
    const int d = int(integer(info, 3, "dim", 1, INT32_MAX)), v = int(integer(info, 4, "vocab", 1, INT32_MAX));
    qk::embeddingBackward(stream(), ptr<const float>(info, 0, count * d * 4, "dy"), ptr<const int32_t>(info, 1, count * 4, "ids"),
                          count, d, v, ptr<float>(info, 5, int64_t(v) * d * 4, "dweight"));
    return info.Env().Undefined();
  });
}

qk::AdamW adamwOptions(const Napi::CallbackInfo& info, size_t i) {
  return qk::AdamW{float(number(info, i, "lr")), float(number(info, i + 1, "beta1")), float(number(info, i + 2, "beta2")),
                   float(number(info, i + 3, "eps")), float(number(info, i + 4, "weightDecay")),
                   int(integer(info, i + 5, "step", 1, INT32_MAX))};
}

void prefetchIfManaged(const DeviceBuffer& b) {
  if (b.managed) qk::Runtime::get().prefetchToDevice(b.ptr, b.bytes);
}

// adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weightDecay, step)
Napi::Value Adamw(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t n = len(info, 4, "length");
    DeviceBuffer &m = buffer(info, 2, n * 4, "m"), &v = buffer(info, 3, n * 4, "v");
    prefetchIfManaged(m);  // paged optimizer states: bring them to the device before the update
    prefetchIfManaged(v);
    qk::adamw32(stream(), ptr<float>(info, 0, n * 4, "param"), ptr<const float>(info, 1, n * 4, "grad"),
                static_cast<float*>(m.ptr), static_cast<float*>(v.ptr), n, adamwOptions(info, 5));
    return info.Env().Undefined();
  });
}

// adamw8bit(param, grad, state1, state2, absmax1, absmax2, qmap1, qmap2, n, lr, beta1, beta2, eps, weightDecay, step)
Napi::Value Adamw8bit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t n = len(info, 8, "length");
    const int64_t blocks = (n + 255) / 256;
    DeviceBuffer &s1 = buffer(info, 2, n, "state1"), &s2 = buffer(info, 3, n, "state2");
    DeviceBuffer &a1 = buffer(info, 4, blocks * 4, "absmax1"), &a2 = buffer(info, 5, blocks * 4, "absmax2");
    for (const DeviceBuffer* b : {&s1, &s2, &a1, &a2}) prefetchIfManaged(*b);  // every state buffer may be paged
    qk::adamw8bit(stream(), ptr<float>(info, 0, n * 4, "param"), ptr<const float>(info, 1, n * 4, "grad"),
                  static_cast<uint8_t*>(s1.ptr), static_cast<uint8_t*>(s2.ptr), static_cast<float*>(a1.ptr),
                  static_cast<float*>(a2.ptr), ptr<const float>(info, 6, 1024, "qmap1"),
                  ptr<const float>(info, 7, 1024, "qmap2"), n, adamwOptions(info, 9));
    return info.Env().Undefined();
  });
}

// batch, heads, kvHeads, seq, headDim at i .. i+4 (scale left at 1).
qk::AttentionArgs attentionDims(const Napi::CallbackInfo& info, size_t i) {
  qk::AttentionArgs a;
  a.batch = dim(info, i, "batch");
  a.heads = dim(info, i + 1, "heads");
  a.kvHeads = dim(info, i + 2, "kvHeads");
  a.seq = dim(info, i + 3, "seq");
  a.headDim = dim(info, i + 4, "headDim");
  a.scale = 1.f;
  return a;
}

// The dims, then scale and segmentIds at i+5, i+6.
qk::AttentionArgs attentionArgs(const Napi::CallbackInfo& info, size_t i) {
  qk::AttentionArgs a = attentionDims(info, i);
  a.scale = float(number(info, i + 5, "scale"));
  a.segmentIds = optPtr<int32_t>(info, i + 6, int64_t(a.batch) * a.seq * 4, "segmentIds");
  return a;
}

// attention(q, k, v, batch, heads, kvHeads, seq, headDim, scale, segmentIds(0), out, lse)
Napi::Value Attention(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const qk::AttentionArgs a = attentionArgs(info, 3);
    const int64_t qn = int64_t(a.batch) * a.heads * a.seq * a.headDim, kn = int64_t(a.batch) * a.kvHeads * a.seq * a.headDim;
    qk::attentionForward(stream(), a, ptr<const float>(info, 0, qn * 4, "q"), ptr<const float>(info, 1, kn * 4, "k"),
                         ptr<const float>(info, 2, kn * 4, "v"), ptr<float>(info, 10, qn * 4, "out"),
                         ptr<float>(info, 11, int64_t(a.batch) * a.heads * a.seq * 4, "lse"));
    return info.Env().Undefined();
  });
}

// attentionBackward(dout, q, k, v, out, lse, batch, heads, kvHeads, seq, headDim, scale, segmentIds(0), dq, dk, dv, scratch)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const qk::AttentionArgs a = attentionArgs(info, 6);
    const int64_t rows = int64_t(a.batch) * a.heads * a.seq;
    const int64_t qn = rows * a.headDim, kn = int64_t(a.batch) * a.kvHeads * a.seq * a.headDim;
    qk::attentionBackward(stream(), a, ptr<const float>(info, 0, qn * 4, "dout"), ptr<const float>(info, 1, qn * 4, "q"),
                          ptr<const float>(info, 2, kn * 4, "k"), ptr<const float>(info, 3, kn * 4, "v"),
                          ptr<const float>(info, 4, qn * 4, "out"), ptr<const float>(info, 5, rows * 4, "lse"),
                          ptr<float>(info, 13, qn * 4, "dq"), ptr<float>(info, 14, kn * 4, "dk"), ptr<float>(info, 15, kn * 4, "dv"),
                          ptr<float>(info, 16, rows * 4, "scratch"));
    return info.Env().Undefined();
  });
}

// ---- tensor-core attention (attention_tc.cu); dtypes F32 or BF16, validated by the launchers ----
int64_t attentionElems(const qk::AttentionArgs& a, bool kv) { return int64_t(a.batch) * (kv ? a.kvHeads : a.heads) * a.seq * a.headDim; }
int floatDtype(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const int dt = dtype(info, i, name);
  qk::require(dt == qk::F32 || dt == qk::BF16, std::string(name) + ": must be f32 (0) or bf16 (2)");
  return dt;
}
void* scratchPtr(const Napi::CallbackInfo& info, size_t i, size_t bytes) {
  if (bytes == 0 && integer(info, i, "scratch", 0, UINT32_MAX) == 0) return nullptr;
  return ptr<void>(info, i, bytes, "scratch");
}

// attentionUseTc(batch, heads, kvHeads, seq, headDim, bf16Buffers) → boolean (QLORA_CUDA_ATTENTION, head dim, device)
Napi::Value AttentionUseTc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Boolean::New(info.Env(), qk::attentionUseTc(attentionDims(info, 0), boolean(info, 5, "bf16Buffers")));
  });
}

// attentionTcScratchBytes(batch, heads, kvHeads, seq, headDim, backward, inDtype) → bytes
Napi::Value AttentionTcScratchBytes(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const size_t n = qk::attentionTcScratchBytes(attentionDims(info, 0), boolean(info, 5, "backward"), floatDtype(info, 6, "inDtype"));
    return Napi::Number::New(info.Env(), double(n));
  });
}

// attentionTc(q, k, v, inDtype, batch, heads, kvHeads, seq, headDim, scale, segmentIds(0), out, outDtype, lse, scratch(0))
Napi::Value AttentionTc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int in = floatDtype(info, 3, "inDtype"), outDt = floatDtype(info, 12, "outDtype");
    const qk::AttentionArgs a = attentionArgs(info, 4);
    const int64_t qn = attentionElems(a, false), kn = attentionElems(a, true), es = int64_t(qk::dtypeSize(in));
    qk::attentionForwardTc(stream(), a, in, ptr<const void>(info, 0, qn * es, "q"), ptr<const void>(info, 1, kn * es, "k"),
                           ptr<const void>(info, 2, kn * es, "v"), outDt, ptr<void>(info, 11, qn * qk::dtypeSize(outDt), "out"),
                           ptr<float>(info, 13, int64_t(a.batch) * a.heads * a.seq * 4, "lse"),
                           scratchPtr(info, 14, qk::attentionTcScratchBytes(a, false, in)));
    return info.Env().Undefined();
  });
}

// attentionBackwardTc(dout, q, k, v, inDtype, out, outDtype, lse, batch, heads, kvHeads, seq, headDim, scale, segmentIds(0),
//                     dq, dk, dv, gradDtype, scratch)
Napi::Value AttentionBackwardTc(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const int in = floatDtype(info, 4, "inDtype"), outDt = floatDtype(info, 6, "outDtype"), gd = floatDtype(info, 18, "gradDtype");
    const qk::AttentionArgs a = attentionArgs(info, 8);
    const int64_t qn = attentionElems(a, false), kn = attentionElems(a, true), es = int64_t(qk::dtypeSize(in));
    const int64_t gs = int64_t(qk::dtypeSize(gd));
    qk::attentionBackwardTc(stream(), a, in, ptr<const void>(info, 0, qn * es, "dout"), ptr<const void>(info, 1, qn * es, "q"),
                            ptr<const void>(info, 2, kn * es, "k"), ptr<const void>(info, 3, kn * es, "v"), outDt,
                            ptr<const void>(info, 5, qn * qk::dtypeSize(outDt), "out"),
                            ptr<const float>(info, 7, int64_t(a.batch) * a.heads * a.seq * 4, "lse"), gd,
                            ptr<void>(info, 15, qn * gs, "dq"), ptr<void>(info, 16, kn * gs, "dk"), ptr<void>(info, 17, kn * gs, "dv"),
                            ptr<void>(info, 19, qk::attentionTcScratchBytes(a, true, in), "scratch"));
    return info.Env().Undefined();
  });
}

qlora::Register o1("fill", Fill), o2("copy", Copy), o2b("copyInPlace", CopyInPlace), o3("unary", Unary), o4("binary", Binary), o5("reduce", Reduce),
    o6("gemm", Gemm), o7("quantize4bit", Quantize4bit), o8("dequantize4bit", Dequantize4bit),
    o9("quantizeBlockwise8", QuantizeBlockwise8), o10("gemm4bit", Gemm4bit<false>), o11("gemm4bitInputGrad", Gemm4bit<true>),
    o11b("gemm4bitF32", Gemm4bitF32),
    o12("rmsNorm", RmsNorm), o13("rmsNormBackward", RmsNormBackward), o14("rope", Rope), o15("swiglu", Swiglu),
    o16("swigluBackward", SwigluBackward), o17("softmax", Softmax), o18("softmaxBackward", SoftmaxBackward),
    o19("crossEntropy", CrossEntropy), o20("crossEntropyBackward", CrossEntropyBackward), o21("embedding", Embedding),
    o22("embeddingBackward", EmbeddingBackward), o23("adamw", Adamw), o24("adamw8bit", Adamw8bit), o25("attention", Attention),
    o26("attentionBackward", AttentionBackward);
qlora::Register oAttnTc1("attentionUseTc", AttentionUseTc), oAttnTc2("attentionTcScratchBytes", AttentionTcScratchBytes),
    oAttnTc3("attentionTc", AttentionTc), oAttnTc4("attentionBackwardTc", AttentionBackwardTc);

}  // namespace
}  // namespace qn
