import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** What csrc/napi/memory.cc's deviceStatus() returns. */
export interface NativeDeviceStatus {
  readonly available: boolean;
  readonly count: number;
  readonly code: number;
  readonly reason: string;
  readonly runtimeVersion: number;
  readonly driverVersion: number;
  readonly name: string;
  readonly computeCapability: string;
  readonly smCount: number;
  readonly totalMemory: number;
}

export interface NativeMemoryStats {
  readonly currentBytes: number;
  readonly peakBytes: number;
  readonly reservedBytes: number;
  readonly managedBytes: number;
  readonly allocCalls: number;
  readonly deviceFreeBytes: number;
  readonly deviceTotalBytes: number;
}

type Handle = number;
type Fn = (...args: never[]) => void;

/** The raw addon (csrc/napi/*.cc). Handles are numbers into the native buffer table; 0 = absent. */
export interface NativeCuda {
  deviceStatus(): NativeDeviceStatus;
  cublasInfo(): { loaded: boolean; library: string; detail: string; version: number };
  alloc(bytes: number, managed?: boolean): Handle;
  free(handle: Handle): void;
  upload(handle: Handle, data: ArrayBufferView): void;
  download(handle: Handle, data: ArrayBufferView): void;
  prefetch(handle: Handle): void;
  memoryStats(): NativeMemoryStats;
  resetPeak(): void;
  emptyCache(): void;
  synchronize(): void;
  fill(out: Handle, dtype: number, length: number, value: number): void;
  copy(
    src: Handle,
    srcDtype: number,
    shape: readonly number[],
    strides: readonly number[],
    offset: number,
    dst: Handle,
    dstDtype: number,
  ): void;
  copyInPlace(
    dst: Handle,
    dstDtype: number,
    shape: readonly number[],
    dstStrides: readonly number[],
    dstOffset: number,
    src: Handle,
    srcDtype: number,
    srcStrides: readonly number[],
    srcOffset: number,
  ): void;
  unary(op: number, x: Handle, out: Handle, length: number): void;
  binary(
    op: number,
    a: Handle,
    shape: readonly number[],
    aStrides: readonly number[],
    aOffset: number,
    b: Handle,
    bStrides: readonly number[],
    bOffset: number,
    out: Handle,
  ): void;
  reduce(op: number, x: Handle, outer: number, size: number, inner: number, out: Handle): void;
  gemm(
    a: Handle,
    b: Handle,
    c: Handle,
    batch: number,
    m: number,
    n: number,
    k: number,
    transA: boolean,
    transB: boolean,
    aBatchStride: number,
    bBatchStride: number,
    dtype: number,
  ): void;
  quantize4bit(
    x: Handle,
    dtype: number,
    n: number,
    blocksize: number,
    fp4: boolean,
    codes: Handle,
    absmax: Handle,
  ): void;
  dequantize4bit(...args: (number | boolean)[]): void;
  quantizeBlockwise8(
    x: Handle,
    n: number,
    offset: number,
    blocksize: number,
    code: Handle,
    q: Handle,
    absmax: Handle,
  ): void;
  gemm4bit(...args: (number | boolean)[]): void;
  gemm4bitInputGrad(...args: (number | boolean)[]): void;
  /** (x f32, m, weight args, y f32, inputGrad): exact-f32 4-bit matmul without a whole-weight copy. */
  gemm4bitF32(...args: (number | boolean)[]): void;
  rmsNorm: Fn;
  rmsNormBackward: Fn;
  rope: Fn;
  swiglu: Fn;
  swigluBackward: Fn;
  softmax: Fn;
  softmaxBackward: Fn;
  crossEntropy: Fn;
  crossEntropyBackward: Fn;
  embedding: Fn;
  embeddingBackward: Fn;
  adamw: Fn;
  adamw8bit: Fn;
  attention: Fn;
  attentionBackward: Fn;
  /** Tensor-core attention (attention_tc.cu): the path QLORA_CUDA_ATTENTION / head dim / device select, and its scratch. */
  attentionUseTc(
    batch: number,
    heads: number,
    kvHeads: number,
    seq: number,
    headDim: number,
    bf16Buffers: boolean,
  ): boolean;
  attentionTcScratchBytes(
    batch: number,
    heads: number,
    kvHeads: number,
    seq: number,
    headDim: number,
    backward: boolean,
    inDtype: number,
  ): number;
  /** y[m,n] += scale · t[m,r] · op(B) (csrc/kernels/lora.cu): B [n,r] when bTransposed else [r,n]; r ≤ 64;
   * t and B both f32 (0) or both bf16 (2); y f32. */
  loraAccumulate(
    t: Handle,
    b: Handle,
    dtype: number,
    bTransposed: boolean,
    m: number,
    n: number,
    r: number,
    scale: number,
    y: Handle,
  ): void;
  /** NCCL through dlopen (csrc/napi/nccl.cc): tries the names in order; never throws for a missing library. */
  ncclLoad(names: readonly string[]): { loaded: boolean; library: string; detail: string; version: number };
  /** ncclGetUniqueId: 128 bytes (rank 0). */
  ncclUniqueId(): Uint8Array;
  /** ncclCommInitRank on a worker thread (blocks until every rank joins) for `device`; resolves to a handle. */
  ncclInitRank(id: Uint8Array, nranks: number, rank: number, device: number): Promise<number>;
  /** Queues a collective (kind 0 allReduce, 1 allGather, 2 reduceScatter, 3 broadcast; op ncclRedOp_t) on the
   * communicator's stream; the input is copied at once. Returns a slot for ncclTest/ncclFinish. */
  ncclStart(
    comm: number,
    kind: number,
    op: number,
    root: number,
    input: Float32Array | Float64Array | Int32Array,
  ): number;
  ncclTest(slot: number): boolean;
  ncclFinish(slot: number, out: Float32Array | Float64Array | Int32Array): void;
  ncclAbort(comm: number): void;
  ncclDestroy(comm: number): void;
  attentionTc(...args: number[]): void;
  attentionBackwardTc(...args: number[]): void;
}

let cached: { native?: NativeCuda; error?: string } | undefined;

/** Loads the addon once ($QLORA_CUDA_KERNELS_PATH, else build/Release, else prebuilds/); never throws. */
export function tryLoadNative(): { native?: NativeCuda; error?: string } {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
  try {
    const explicit = process.env.QLORA_CUDA_KERNELS_PATH;
    const native = explicit ? require(explicit) : require("node-gyp-build")(packageRoot);
    cached = { native: native as NativeCuda };
  } catch (error) {
    cached = {
      error:
        `the native addon is not built or could not be loaded (${error instanceof Error ? error.message.split("\n")[0] : String(error)}); ` +
        "build it with `pnpm --filter @qlora/cuda-kernels build:native` (needs nvcc)",
    };
  }
  return cached;
}
