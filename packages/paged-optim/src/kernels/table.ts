// Which implementation of each update op runs on a backend. A backend provides an op by carrying a
// method of the name below (the cpu backend of @qlora/cpu-kernels carries all of them, native); the
// TypeScript reference runs on host buffers otherwise. A device backend without the op gets the
// nearest op it has (CUDA: its AdamW 32-bit and 8-bit kernels) or a NO_KERNEL error naming the op.
import type { Backend, Buffer, HostBuffer } from "@qlora/tensor";
import { OptimError } from "../errors";
import {
  adamw8bitReference,
  adamw32Reference,
  lion8bitReference,
  lion32Reference,
  scaleReference,
  sgdReference,
  sumSquaresReference,
} from "./reference";
import {
  type AdamW8bitScalars,
  type AdamW32Scalars,
  type AdamWHyper,
  adamw8bitScalars,
  adamw32Scalars,
  type LionHyper,
  type LionScalars,
  lionScalars,
  type SgdHyper,
  type SgdScalars,
  sgdScalars,
} from "./scalars";

/** 8-bit blockwise states as backend buffers (u8 codes, f32 absmax [ceil(n/256)], f32 maps [256]). */
export interface Blockwise8bitBuffers {
  readonly state1: Buffer;
  readonly absmax1: Buffer;
  readonly qmap1: Buffer;
  readonly state2?: Buffer;
  readonly absmax2?: Buffer;
  readonly qmap2?: Buffer;
}

/** The optional methods a backend may carry to run the update ops natively (f32 param/grad, in place). */
export interface OptimizerBackendOps {
  optimAdamW32?(p: Buffer, g: Buffer, m: Buffer, v: Buffer, n: number, s: AdamW32Scalars): void;
  optimAdamW8bit?(p: Buffer, g: Buffer, st: Blockwise8bitBuffers, n: number, s: AdamW8bitScalars): void;
  optimLion32?(p: Buffer, g: Buffer, m: Buffer, n: number, s: LionScalars): void;
  optimLion8bit?(p: Buffer, g: Buffer, st: Blockwise8bitBuffers, n: number, s: LionScalars): void;
  optimSgd?(p: Buffer, g: Buffer, buf: Buffer | null, n: number, s: SgdScalars): void;
  /** Σ x² in f64. */
  optimSumSquares?(x: Buffer, n: number): number;
  optimScale?(x: Buffer, n: number, factor: number): void;
}

/** The update ops as the optimizers call them (hyperparameters in, scalars prepared here). */
export interface OptimizerKernels {
  readonly source: "native" | "reference" | "mixed";
  adamw32(p: Buffer, g: Buffer, m: Buffer, v: Buffer, n: number, h: AdamWHyper): void;
  adamw8bit(p: Buffer, g: Buffer, st: Blockwise8bitBuffers, n: number, h: AdamWHyper): void;
  lion32(p: Buffer, g: Buffer, m: Buffer, n: number, h: LionHyper): void;
  lion8bit(p: Buffer, g: Buffer, st: Blockwise8bitBuffers, n: number, h: LionHyper): void;
  sgd(p: Buffer, g: Buffer, buf: Buffer | null, n: number, h: SgdHyper, first: boolean): void;
  sumSquares(x: Buffer, n: number): number;
  /** In-place x *= factor; absent on a device backend without the kernel. */
  scale?(x: Buffer, n: number, factor: number): void;
}

function isHost(b: Buffer): b is HostBuffer {
  return b.device === "cpu" && "data" in b;
}

function f32(b: Buffer, op: string, what: string): Float32Array {
  if (!isHost(b) || !(b.data instanceof Float32Array))
    throw new OptimError("NO_KERNEL", `${op}: ${what} must be an f32 host buffer for the TypeScript reference`);
  return b.data;
}
function u8(b: Buffer | undefined, op: string, what: string): Uint8Array {
  if (b === undefined || !isHost(b) || !(b.data instanceof Uint8Array))
    throw new OptimError("NO_KERNEL", `${op}: ${what} must be a u8 host buffer for the TypeScript reference`);
  return b.data;
}

/** The TypeScript reference over host buffers. */
export const referenceKernels: OptimizerKernels = {
  source: "reference",
  adamw32(p, g, m, v, n, h) {
    const op = "adamw32";
    adamw32Reference(f32(p, op, "param"), f32(g, op, "grad"), f32(m, op, "m"), f32(v, op, "v"), n, adamw32Scalars(h));
  },
  adamw8bit(p, g, st, n, h) {
    const op = "adamw8bit";
    adamw8bitReference(
      f32(p, op, "param"),
      f32(g, op, "grad"),
      {
        state1: u8(st.state1, op, "state1"),
        absmax1: f32(st.absmax1, op, "absmax1"),
        state2: u8(st.state2, op, "state2"),
        absmax2: f32(st.absmax2 ?? st.absmax1, op, "absmax2"),
      },
      f32(st.qmap1, op, "qmap1"),
      f32(st.qmap2 ?? st.qmap1, op, "qmap2"),
      n,
      adamw8bitScalars(h),
    );
  },
  lion32(p, g, m, n, h) {
    lion32Reference(f32(p, "lion32", "param"), f32(g, "lion32", "grad"), f32(m, "lion32", "m"), n, lionScalars(h));
  },
  lion8bit(p, g, st, n, h) {
    const op = "lion8bit";
    lion8bitReference(
      f32(p, op, "param"),
      f32(g, op, "grad"),
      { state1: u8(st.state1, op, "state1"), absmax1: f32(st.absmax1, op, "absmax1") },
      f32(st.qmap1, op, "qmap1"),
      n,
      lionScalars(h),
    );
  },
  sgd(p, g, buf, n, h, first) {
    sgdReference(
      f32(p, "sgd", "param"),
      f32(g, "sgd", "grad"),
      buf === null ? null : f32(buf, "sgd", "momentum buffer"),
      n,
      sgdScalars(h, first),
    );
  },
  sumSquares: (x, n) => sumSquaresReference(f32(x, "sumSquares", "x"), n),
  scale: (x, n, factor) => scaleReference(f32(x, "scale", "x"), n, factor),
};

/** bitsandbytes-style CUDA methods (@qlora/cuda-kernels): AdamW options rather than prepared scalars. */
interface CudaStyleOps {
  adamw8bitStepInPlace?(
    p: Buffer,
    g: Buffer,
    st: { state1: Buffer; state2: Buffer; absmax1: Buffer; absmax2: Buffer; qmap1: Buffer; qmap2: Buffer },
    n: number,
    o: AdamWHyper,
  ): void;
}

const cache = new WeakMap<Backend, OptimizerKernels>();

/** The update ops for `backend` (cached per backend object). */
export function kernelsFor(backend: Backend): OptimizerKernels {
  let k = cache.get(backend);
  if (!k) {
    k = resolve(backend);
    cache.set(backend, k);
  }
  return k;
}

function resolve(backend: Backend): OptimizerKernels {
  const ops = backend as Backend & OptimizerBackendOps & CudaStyleOps;
  const host = backend.device === "cpu";
  const missing = (op: string) => (): never => {
    throw new OptimError(
      "NO_KERNEL",
      `backend "${backend.name}" has no ${op} update kernel (and its buffers are not host memory the TypeScript reference could update)`,
    );
  };
  const fallback = host ? referenceKernels : undefined;
  let nativeCount = 0;
  const pick = <K extends keyof OptimizerBackendOps>(name: K) => {
    const fn = ops[name];
    if (typeof fn === "function") nativeCount++;
    return typeof fn === "function" ? (fn.bind(backend) as NonNullable<OptimizerBackendOps[K]>) : undefined;
  };
  const adamw32 = pick("optimAdamW32");
  const adamw8bit = pick("optimAdamW8bit");
  const lion32 = pick("optimLion32");
  const lion8bit = pick("optimLion8bit");
  const sgd = pick("optimSgd");
  const sumSquares = pick("optimSumSquares");
  const scale = pick("optimScale");
  const cuda8bit = typeof ops.adamw8bitStepInPlace === "function" ? ops.adamw8bitStepInPlace.bind(backend) : undefined;
  return {
    source: nativeCount === 7 ? "native" : nativeCount === 0 && host ? "reference" : "mixed",
    adamw32: adamw32
      ? (p, g, m, v, n, h) => adamw32(p, g, m, v, n, adamw32Scalars(h))
      : (fallback?.adamw32 ?? ((p, g, m, v, n, h) => backend.adamwStepInPlace(p, g, m, v, n, h))),
    adamw8bit: adamw8bit
      ? (p, g, st, n, h) => adamw8bit(p, g, st, n, adamw8bitScalars(h))
      : (fallback?.adamw8bit ??
        (cuda8bit
          ? (p, g, st, n, h) =>
              cuda8bit(p, g, { ...st, state2: st.state2!, absmax2: st.absmax2!, qmap2: st.qmap2! }, n, h)
          : missing("adamw8bit"))),
    lion32: lion32 ? (p, g, m, n, h) => lion32(p, g, m, n, lionScalars(h)) : (fallback?.lion32 ?? missing("lion32")),
    lion8bit: lion8bit
      ? (p, g, st, n, h) => lion8bit(p, g, st, n, lionScalars(h))
      : (fallback?.lion8bit ?? missing("lion8bit")),
    sgd: sgd ? (p, g, b, n, h, first) => sgd(p, g, b, n, sgdScalars(h, first)) : (fallback?.sgd ?? missing("sgd")),
    sumSquares:
      sumSquares ??
      fallback?.sumSquares ??
      ((x, n) => sumSquaresReference(new Float32Array(backend.toHost(x) as Float32Array).subarray(0, n), n)),
    scale: scale ?? fallback?.scale,
  };
}
