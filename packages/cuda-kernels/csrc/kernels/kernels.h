// Host launchers of every kernel. Plain C++ (no CUDA headers beyond cuda_runtime_api.h) so the
// N-API layer (g++) and the harness (nvcc) share one declaration. All pointers are device
// pointers; every launcher validates its arguments (qk::ArgError) and checks the launch
// (qk::CudaError). bf16/f16 buffers are uint16_t bit patterns.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace qk {

// ---- nf4.cu: bitsandbytes 4-bit formats (spec §2–§5) ----
/** x (f32/bf16/f16, n elements) → codes u8[ceil(n/2)] (element 2j in the high nibble) and absmax f32[ceil(n/B)]. */
void quantize4bit(cudaStream_t s, const void* x, int dtype, int64_t n, int blocksize, bool fp4, uint8_t* codes,
                  float* absmax);
struct Absmax4bit {
  const float* absmax = nullptr;        // plain f32 absmax, or (double quant):
  const uint8_t* qabsmax = nullptr;     // u8 [nBlocks]
  const float* code = nullptr;          // f32 [256]
  const float* nestedAbsmax = nullptr;  // f32 [ceil(nBlocks / nestedBlocksize)]
  int nestedBlocksize = 256;
  float offset = 0.f;
};
/** codes → out (f32/bf16/f16), double quant resolved in the same launch (spec §4, §5.4). */
void dequantize4bit(cudaStream_t s, const uint8_t* codes, int64_t n, int blocksize, bool fp4, const Absmax4bit& absmax,
                    void* out, int outDtype);
/** 8-bit blockwise quantize of fl32(x − offset) with a sorted 256-entry code (spec §5.2); the DQ step. */
void quantizeBlockwise8(cudaStream_t s, const float* x, int64_t n, float offset, int blocksize, const float* code,
                        uint8_t* q, float* absmax);

// ---- elementwise.cu ----
constexpr int kMaxRank = 8;
struct View {
  int rank = 0;
  int64_t shape[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};
  int64_t offset = 0;
};
void fill(cudaStream_t s, void* out, int dtype, int64_t n, double value);
/** Strided gather of src (through view) into contiguous dst, with a dtype cast. */
void copyStrided(cudaStream_t s, const void* src, int srcDtype, const View& view, void* dst, int dstDtype);
/** Strided scatter: dst[dstView(i)] = cast(src[srcView(i)]) for every index of the (equal) view shapes. */
void copyInPlace(cudaStream_t s, void* dst, int dstDtype, const View& dstView, const void* src, int srcDtype, const View& srcView);
enum UnaryOp { U_NEG, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_ABS, U_SIGMOID, U_SILU, U_RELU, U_TANH, U_RECIP, U_SQUARE, U_SIGN };
enum BinaryOp { B_ADD, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN, B_POW, B_EQ, B_GT, B_LT };
enum ReduceOp { R_SUM, R_MAX, R_MIN };
void unary(cudaStream_t s, int op, const float* x, float* y, int64_t n);
/** out (contiguous, shape of aView/bView's rank) = op(a[aView], b[bView]); compare ops give 1.0/0.0. */
void binary(cudaStream_t s, int op, const float* a, const View& aView, const float* b, const View& bView, float* out);
void reduce(cudaStream_t s, int op, const float* x, int64_t outer, int64_t size, int64_t inner, float* out);

// ---- gemm.cu: dense GEMM (cuBLAS when present, else our tensor-core / SIMT kernels) ----
struct GemmArgs {
  int batch = 1, m = 0, n = 0, k = 0;
  bool transA = false, transB = false;  // A stored [k,m], B stored [n,k]
  int64_t aBatchStride = -1, bBatchStride = -1;  // -1: matrix size; 0: broadcast
  int dtype = 0;                        // F32 or BF16 inputs (both A and B); output always f32
};
/** C[b] (f32 [m,n] row-major) = op(A[b]) · op(B[b]). useCublas: -1 auto, 0 never, 1 required. */
void gemm(cudaStream_t s, const GemmArgs& g, const void* A, const void* B, float* C, int useCublas = -1);
/** Our tensor-core GEMM alone (bf16 in, f32 accumulate/out). variant: -1 auto (pipelined mma.sync kernel
 * unless QLORA_CUDA_GEMM=legacy), 0 legacy synchronous WMMA kernel, 1 pipelined. The pipelined kernel needs
 * 16-byte aligned A/B, batch strides % 8 == 0 and the contiguous extent of each operand (k, or m / n when
 * transposed that way) % 8 == 0; otherwise the legacy kernel runs. Returns true when the pipelined one ran. */
bool gemmTensorCoreBf16(cudaStream_t s, const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C, int variant = -1);
/** QLORA_CUDA_GEMM=legacy (read once): the synchronous WMMA kernels for the dense and fused GEMMs. */
bool legacyGemmFromEnv();

// ---- gemm_nf4.cu: fused dequant + GEMM for frozen 4-bit weights W [n, k] ----
struct Weight4bit {
  const uint8_t* codes = nullptr;
  int n = 0, k = 0, blocksize = 64;
  bool fp4 = false;
  Absmax4bit absmax;
};
/** Path of gemm4bit / gemm4bitInputGrad. AUTO: QLORA_CUDA_GEMM4BIT=fused|dequant-cublas|auto (default auto:
 * dequant-cublas when cuBLAS is usable and m ≥ kGemm4bitCublasMinM, else fused; QLORA_CUDA_GEMM=legacy turns
 * fused into legacy). LEGACY: synchronous WMMA kernel with fused dequant. FUSED: pipelined mma.sync kernel with
 * NF4 codes + absmax streamed by cp.async and dequantized in shared memory (legacy when W.k % 32 != 0, etc.).
 * DEQUANT_CUBLAS: W dequantized to bf16 in row panels of ≤ kGemm4bitPanelBytes (caching allocator) + cuBLAS
 * bf16 GEMM per panel (bitsandbytes' training path); fused when cuBLAS is absent or the panel cannot be aligned. */
enum Gemm4bitPath { GEMM4BIT_AUTO = -1, GEMM4BIT_LEGACY = 0, GEMM4BIT_FUSED = 1, GEMM4BIT_DEQUANT_CUBLAS = 2 };
constexpr int kGemm4bitCublasMinM = 256;
constexpr int64_t kGemm4bitPanelBytes = int64_t(64) << 20;
/** The path that a call with these arguments takes (after env, cuBLAS availability and shape checks). */
int gemm4bitResolvePath(int path, int m, const Weight4bit& w, bool inputGrad, int outDtype);
/** y[m,n] (f32 or bf16 out) = x[m,k] (f32 or bf16) · dequant(W)ᵀ. bf16 tensor cores, f32 accumulation;
 * the dequantized weight is rounded to bf16 (bitsandbytes' compute-dtype semantics). m == 1 → GEMV
 * (unless DEQUANT_CUBLAS is asked for explicitly). */
void gemm4bit(cudaStream_t s, const void* x, int xDtype, int m, const Weight4bit& w, void* y, int yDtype,
              int path = GEMM4BIT_AUTO);
/** dx[m,k] = dy[m,n] · dequant(W)  (MatMul4Bit.backward). */
void gemm4bitInputGrad(cudaStream_t s, const void* dy, int dyDtype, int m, const Weight4bit& w, void* dx, int dxDtype,
                       int path = GEMM4BIT_AUTO);

// ---- exact-f32 4-bit matmul (the reference backend's numerics: fl32(code · absmax) weights, f32 GEMM) ----
/** inputGrad false: y[m,n] = x[m,k] · dequant(W)ᵀ; true: y[m,k] = x[m,n] · dequant(W). Never a whole-weight
 * copy. path -1: cuBLAS when usable, else SIMT; 0: SIMT; 1: cuBLAS. cuBLAS (gemm_nf4.cu): W dequantized to f32
 * in row panels of ≤ kGemm4bitPanelBytes + SGEMM per panel (columns of y, or beta = 1 over the reduction).
 * SIMT (gemm4bit_f32.cu): dequantized tile by tile in shared memory, no scratch at all. */
void gemm4bitF32(cudaStream_t s, const float* x, int m, const Weight4bit& w, float* y, bool inputGrad, int path = -1);
void gemm4bitF32Simt(cudaStream_t s, const float* x, int m, const Weight4bit& w, float* y, bool inputGrad);

// ---- rmsnorm.cu ----
void rmsNorm(cudaStream_t s, const float* x, const float* weight, int64_t rows, int dim, float eps, float* y, float* rstd);
void rmsNormBackward(cudaStream_t s, const float* dy, const float* x, const float* weight, const float* rstd,
                     int64_t rows, int dim, float* dx, float* dweight);

// ---- rope.cu: Hugging Face rotate_half on x [batch, seq, heads, headDim] ----
void rope(cudaStream_t s, const float* x, const int32_t* positions, int batch, int seq, int heads, int headDim,
          float theta, bool inverse, float* y);

// ---- lora.cu: fused rank-r accumulate (LoRA up-projection / input gradient), r <= 64 ----
/** y[m,n] += scale · t[m,r] · op(B): B stored [n,r] (op = ᵀ, bTransposed) or [r,n]. t and B both f32 or
 * both bf16 (dtype); f32 accumulation; y read and written once (no y-sized temporary). */
void loraAccumulate(cudaStream_t s, const void* t, const void* b, int dtype, bool bTransposed, int m, int n, int r,
                    float scale, float* y);

// ---- swiglu.cu ----
void swiglu(cudaStream_t s, const float* gate, const float* up, int64_t n, float* y);
void swigluBackward(cudaStream_t s, const float* dy, const float* gate, const float* up, int64_t n, float* dgate,
                    float* dup);

// ---- softmax.cu ----
void softmax(cudaStream_t s, const float* x, int64_t rows, int n, float* y);
void softmaxBackward(cudaStream_t s, const float* dy, const float* y, int64_t rows, int n, float* dx);

// ---- cross_entropy.cu: online (chunked) log-sum-exp, never a full softmax row in memory ----
void crossEntropy(cudaStream_t s, const float* logits, const int32_t* labels, int64_t rows, int vocab, int ignoreIndex,
                  float* loss, float* lse);
void crossEntropyBackward(cudaStream_t s, const float* dloss, const float* logits, const int32_t* labels,
                          const float* lse, int64_t rows, int vocab, int ignoreIndex, float* dlogits);

// ---- embedding.cu ----
void embedding(cudaStream_t s, const float* weight, const int32_t* ids, int64_t count, int dim, int vocab, float* out);
/** Which embeddingBackward implementation runs. AUTO: SORTED, or ATOMIC when env
 * QLORA_CUDA_EMBEDDING_BWD=legacy (a run-time bypass should the sorted path misbehave on a GPU). */
enum EmbeddingBackwardPath { EMB_BWD_AUTO = 0, EMB_BWD_SORTED = 1, EMB_BWD_ATOMIC = 2 };
/** dweight [vocab, dim] = scatter-add of dy rows at ids; out-of-range ids are skipped.
 * SORTED: deterministic, each row summed in position order in f64 then rounded (bit-identical to the
 * reference backend); scratch comes from Runtime's allocator, so `s` should be Runtime's compute stream.
 * ATOMIC: the previous float-atomicAdd kernel (summation order varies run to run). */
void embeddingBackward(cudaStream_t s, const float* dy, const int32_t* ids, int64_t count, int dim, int vocab,
                       float* dweight, int path = EMB_BWD_AUTO);

// ---- adamw.cu ----
struct AdamW {
  float lr, beta1, beta2, eps, weightDecay;
  int step;
};
/** torch.optim.AdamW, in place, f32 states. */
void adamw32(cudaStream_t s, float* param, const float* grad, float* m, float* v, int64_t n, const AdamW& o);
/** bitsandbytes 8-bit blockwise AdamW (spec §8.4; 256-element blocks, signed qmap1, unsigned qmap2). */
void adamw8bit(cudaStream_t s, float* param, const float* grad, uint8_t* state1, uint8_t* state2, float* absmax1,
               float* absmax2, const float* qmap1, const float* qmap2, int64_t n, const AdamW& o);

// ---- attention.cu: causal flash attention with GQA, f32 I/O, online softmax ----
struct AttentionArgs {
  int batch, heads, kvHeads, seq, headDim;
  float scale;
  const int32_t* segmentIds = nullptr;  // optional [batch, seq]
};
void attentionForward(cudaStream_t s, const AttentionArgs& a, const float* q, const float* k, const float* v,
                      float* out, float* lse);
void attentionBackward(cudaStream_t s, const AttentionArgs& a, const float* dout, const float* q, const float* k,
                       const float* v, const float* out, const float* lse, float* dq, float* dk, float* dv,
                       float* scratch /* [batch, heads, seq] floats */);

// ---- attention_tc.cu: the same attention on bf16 tensor cores (FlashAttention-2, mma.sync m16n8k16),
// f32 accumulation and softmax; head dim 64 or 128, sm_80+. Inputs are bf16 (F32 inputs are rounded to
// bf16 into `scratch` first); out / dq, dk, dv are written as F32 or BF16 from the f32 accumulators.
// The backward is deterministic (no atomics). Compiled, unverified on a GPU (dev/check_attention_tc.cu).
/** Head dim 64/128, heads % kvHeads == 0 and a compute capability 8.0+ device. */
bool attentionTcSupported(const AttentionArgs& a);
/** Which path a call should take: QLORA_CUDA_ATTENTION (read once) = simt|legacy → SIMT, tc → tensor
 * cores; unset → tensor cores for bf16 buffers, SIMT (exact f32) for f32 buffers. Never TC where unsupported. */
bool attentionUseTc(const AttentionArgs& a, bool bf16Buffers);
/** Device scratch the TC launchers need (bytes; 0 for a forward with bf16 inputs). */
size_t attentionTcScratchBytes(const AttentionArgs& a, bool backward, int inDtype);
/** Testing hook (harness): query heads of a GQA group split over `splits` dK/dV blocks when it divides the
 * group (1: one block sums the whole group in registers); 0 restores the automatic choice. Changes the scratch size. */
void attentionTcSetSplits(int splits);
/** inDtype (F32/BF16) is the dtype of q, k, v (and dout); outDtype that of out; lse f32. */
void attentionForwardTc(cudaStream_t s, const AttentionArgs& a, int inDtype, const void* q, const void* k, const void* v,
                        int outDtype, void* out, float* lse, void* scratch);
void attentionBackwardTc(cudaStream_t s, const AttentionArgs& a, int inDtype, const void* dout, const void* q, const void* k,
                         const void* v, int outDtype, const void* out, const float* lse, int gradDtype, void* dq, void* dk,
                         void* dv, void* scratch);
/** All-bf16 shorthands (lse f32). */
void attentionForwardBf16(cudaStream_t s, const AttentionArgs& a, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                          uint16_t* out, float* lse);
void attentionBackwardBf16(cudaStream_t s, const AttentionArgs& a, const uint16_t* dout, const uint16_t* q, const uint16_t* k,
                           const uint16_t* v, const uint16_t* out, const float* lse, uint16_t* dq, uint16_t* dk, uint16_t* dv,
                           void* scratch);

}  // namespace qk
