// Optimizer update ops for @qlora/paged-optim over the native addon (csrc/optim.cc). They ride on the
// cpu backend as extra methods (`optimAdamW32`, …); paged-optim looks them up by name and falls back
// to its TypeScript references when a backend lacks them. Scalars arrive prepared (already f32) by
// paged-optim (src/kernels/scalars.ts); the shapes of those objects are restated here structurally.
import type { Buffer, HostBuffer } from "@qlora/tensor";
import { CpuKernelsError } from "./errors";
import type { NativeModule } from "./load";

type F32 = Float32Array;
type U8 = Uint8Array;

/** The N-API surface of csrc/optim.cc (argument order as there). */
export interface OptimNative {
  optimAdamW32(p: F32, g: F32, m: F32, v: F32, n: number, ...s: number[]): void;
  optimAdamW8bit(p: F32, g: F32, s1: U8, s2: U8, a1: F32, a2: F32, q1: F32, q2: F32, n: number, ...s: number[]): void;
  optimLion32(p: F32, g: F32, m: F32, n: number, ...s: number[]): void;
  optimLion8bit(p: F32, g: F32, s1: U8, a1: F32, q1: F32, n: number, ...s: number[]): void;
  optimSgd(
    p: F32,
    g: F32,
    buf: F32 | null,
    n: number,
    wd: number,
    momentum: number,
    oneMinusDampening: number,
    nesterov: boolean,
    negLr: number,
    first: boolean,
  ): void;
  optimSumSquares(x: F32, n: number): number;
  optimScale(x: F32, n: number, factor: number): void;
  /** The exact code search alone; scalarOnly forces the plain C++ path (tests compare it with the AVX2 one). */
  optimQuantize8bit(qmap: F32, ys: F32, out: U8, scalarOnly?: boolean): void;
}

interface AdamW32Scalars {
  decay: number;
  beta1: number;
  oneMinusBeta1: number;
  beta2: number;
  oneMinusBeta2: number;
  eps: number;
  bc2Sqrt: number;
  negStepSize: number;
}
interface AdamW8bitScalars {
  beta1: number;
  oneMinusBeta1: number;
  beta2: number;
  oneMinusBeta2: number;
  c2Eps: number;
  stepSize: number;
  decay: number;
}
interface LionScalars {
  decay: number;
  beta1: number;
  oneMinusBeta1: number;
  beta2: number;
  oneMinusBeta2: number;
  negLr: number;
}
interface SgdScalars {
  weightDecay: number;
  momentum: number;
  oneMinusDampening: number;
  nesterov: boolean;
  negLr: number;
  first: boolean;
}
interface Blockwise8bitBuffers {
  state1: Buffer;
  absmax1: Buffer;
  qmap1: Buffer;
  state2?: Buffer;
  absmax2?: Buffer;
  qmap2?: Buffer;
}

/** The methods the cpu backend carries for paged-optim (see paged-optim's OptimizerBackendOps). */
export interface OptimizerOps {
  optimAdamW32(p: Buffer, g: Buffer, m: Buffer, v: Buffer, n: number, s: AdamW32Scalars): void;
  optimAdamW8bit(p: Buffer, g: Buffer, st: Blockwise8bitBuffers, n: number, s: AdamW8bitScalars): void;
  optimLion32(p: Buffer, g: Buffer, m: Buffer, n: number, s: LionScalars): void;
  optimLion8bit(p: Buffer, g: Buffer, st: Blockwise8bitBuffers, n: number, s: LionScalars): void;
  optimSgd(p: Buffer, g: Buffer, buf: Buffer | null, n: number, s: SgdScalars): void;
  optimSumSquares(x: Buffer, n: number): number;
  optimScale(x: Buffer, n: number, factor: number): void;
}

function f32(b: Buffer | undefined, op: string, what: string): F32 {
  const d = (b as HostBuffer | undefined)?.data;
  if (b?.device !== "cpu" || !(d instanceof Float32Array))
    throw new CpuKernelsError(
      "BAD_BUFFER",
      `cpu.${op}: ${what} must be an f32 host buffer, got ${b?.dtype} on ${b?.device}`,
    );
  return d;
}
function u8(b: Buffer | undefined, op: string, what: string): U8 {
  const d = (b as HostBuffer | undefined)?.data;
  if (b?.device !== "cpu" || !(d instanceof Uint8Array))
    throw new CpuKernelsError(
      "BAD_BUFFER",
      `cpu.${op}: ${what} must be a u8 host buffer, got ${b?.dtype} on ${b?.device}`,
    );
  return d;
}

export function createOptimizerOps(native: NativeModule): OptimizerOps {
  const nat = native as unknown as OptimNative;
  if (typeof nat.optimAdamW32 !== "function")
    throw new CpuKernelsError("NATIVE_MISSING", "the native addon has no optimizer kernels (rebuild: build:native)");
  return {
    optimAdamW32(p, g, m, v, n, s) {
      const op = "optimAdamW32";
      nat.optimAdamW32(
        f32(p, op, "param"),
        f32(g, op, "grad"),
        f32(m, op, "m"),
        f32(v, op, "v"),
        n,
        s.decay,
        s.beta1,
        s.oneMinusBeta1,
        s.beta2,
        s.oneMinusBeta2,
        s.eps,
        s.bc2Sqrt,
        s.negStepSize,
      );
    },
    optimAdamW8bit(p, g, st, n, s) {
      const op = "optimAdamW8bit";
      nat.optimAdamW8bit(
        f32(p, op, "param"),
        f32(g, op, "grad"),
        u8(st.state1, op, "state1"),
        u8(st.state2, op, "state2"),
        f32(st.absmax1, op, "absmax1"),
        f32(st.absmax2, op, "absmax2"),
        f32(st.qmap1, op, "qmap1"),
        f32(st.qmap2, op, "qmap2"),
        n,
        s.beta1,
        s.oneMinusBeta1,
        s.beta2,
        s.oneMinusBeta2,
        s.c2Eps,
        s.stepSize,
        s.decay,
      );
    },
    optimLion32(p, g, m, n, s) {
      const op = "optimLion32";
      nat.optimLion32(
        f32(p, op, "param"),
        f32(g, op, "grad"),
        f32(m, op, "m"),
        n,
        s.decay,
        s.beta1,
        s.oneMinusBeta1,
        s.beta2,
        s.oneMinusBeta2,
        s.negLr,
      );
    },
    optimLion8bit(p, g, st, n, s) {
      const op = "optimLion8bit";
      nat.optimLion8bit(
        f32(p, op, "param"),
        f32(g, op, "grad"),
        u8(st.state1, op, "state1"),
        f32(st.absmax1, op, "absmax1"),
        f32(st.qmap1, op, "qmap1"),
        n,
        s.decay,
        s.beta1,
        s.oneMinusBeta1,
        s.beta2,
        s.oneMinusBeta2,
        s.negLr,
      );
    },
    optimSgd(p, g, buf, n, s) {
      const op = "optimSgd";
      nat.optimSgd(
        f32(p, op, "param"),
        f32(g, op, "grad"),
        buf === null ? null : f32(buf, op, "momentum buffer"),
        n,
        s.weightDecay,
        s.momentum,
        s.oneMinusDampening,
        s.nesterov,
        s.negLr,
        s.first,
      );
    },
    optimSumSquares: (x, n) => nat.optimSumSquares(f32(x, "optimSumSquares", "x"), n),
    optimScale: (x, n, factor) => nat.optimScale(f32(x, "optimScale", "x"), n, factor),
  };
}

/** The optimizer ops when the loaded addon has them; none (paged-optim then uses its references) otherwise. */
export function optimizerOpsOf(native: NativeModule): Partial<OptimizerOps> {
  return typeof (native as Record<string, unknown>).optimAdamW32 === "function" ? createOptimizerOps(native) : {};
}
