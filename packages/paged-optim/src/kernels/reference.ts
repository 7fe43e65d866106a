// The readable TypeScript reference of every update op: f32 arithmetic written out (Math.fround after
// each operation, in the order the peer library performs them), over flat typed arrays, in place.
// The native kernels (packages/cpu-kernels/csrc/optim.cc) must equal these bit for bit.
//
// torch's vectorized CPU kernels fuse the multiply-add of `add(x, alpha)` and `addcmul` (AVX2 FMA,
// one rounding) but not `addcdiv` or `mul`; the 32-bit updates below do exactly the same (fmaf), which
// makes AdamW and SGD trajectories bit-identical to torch 1.13 on an AVX2 machine (test/torch-parity).
// The 8-bit updates follow bitsandbytes' CUDA kernel written without contraction (spec §8.4).
import { quantize8bitValue } from "@qlora/nf4";
import type { AdamW8bitScalars, AdamW32Scalars, LionScalars, SgdScalars } from "./scalars";

const f = Math.fround;
const bits32 = new Float32Array(1);
const int32 = new Int32Array(bits32.buffer);

/** The f32 neighbour of finite f32 r in the direction of `toward`. */
function nextF32(r: number, toward: number): number {
  if (r === 0) return toward > 0 ? 1.401298464324817e-45 : -1.401298464324817e-45;
  bits32[0] = r;
  int32[0] += toward > r === r > 0 ? 1 : -1;
  return bits32[0];
}

/**
 * fmaf(a, b, c) = a·b + c rounded once to f32 (C's fmaf, the AVX2 vfmadd), for f32 inputs: a·b is
 * exact in a double; the double sum's rounding error is recovered (TwoSum) to settle the one case
 * where rounding the double to f32 would round twice (the double sits exactly between two floats).
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = f(s);
  if (r === s || !Number.isFinite(s)) return r;
  const bv = s - p;
  const e = p - (s - bv) + (c - bv);
  if (e === 0) return r;
  const other = nextF32(r, s);
  if (s !== (r + other) / 2) return r;
  return e > 0 === other > r ? other : r;
}

/** Elements per absmax block of the 8-bit states (bitsandbytes ≥ 0.44). */
export const BLOCK8 = 256;

/** torch.optim.AdamW step (torch 1.13 op order: decay, moments, denom, addcdiv as (value·m)/denom). */
export function adamw32Reference(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  n: number,
  s: AdamW32Scalars,
): void {
  for (let i = 0; i < n; i++) {
    const gi = g[i];
    const pi = f(p[i] * s.decay);
    const mi = fmaf(s.oneMinusBeta1, gi, f(m[i] * s.beta1));
    const vi = fmaf(f(s.oneMinusBeta2 * gi), gi, f(v[i] * s.beta2));
    const denom = f(f(f(Math.sqrt(vi)) / s.bc2Sqrt) + s.eps);
    m[i] = mi;
    v[i] = vi;
    p[i] = f(pi + f(f(s.negStepSize * mi) / denom));
  }
}

/** The 8-bit blockwise states of one tensor (bitsandbytes layout: u8 codes, f32 absmax per 256). */
export interface Blockwise8bitStates {
  readonly state1: Uint8Array;
  readonly absmax1: Float32Array;
  readonly state2?: Uint8Array;
  readonly absmax2?: Float32Array;
}

/** Index of y in the ascending 256-entry map; the stored first moment never flips sign (bnb's fix). */
function quantizeSigned(qmap: Float32Array, y: number, value: number): number {
  let c = quantize8bitValue(qmap, y);
  const codeNegative = qmap[c] < 0 || Object.is(qmap[c], -0);
  const valueNegative = value < 0 || Object.is(value, -0);
  if (codeNegative !== valueNegative) c = value > 0 ? Math.min(c + 1, 255) : Math.max(c - 1, 0);
  return c;
}

/**
 * A block maximum that a NaN never replaces (bitsandbytes' fmaxf, the native `x > acc`): after a near-overflow
 * gradient an inf absmax dequantizes code 0 to 0·inf = NaN, where Math.max would make the whole block NaN.
 */
function maxSkippingNaN(acc: number, x: number): number {
  // biome-ignore lint/complexity/useMathMinMax: Math.max returns NaN when x is NaN; this must return acc
  return x > acc ? x : acc;
}

/** y = value / absmax; a block whose absmax is 0 (all zero) stores code(0). */
function scaled(value: number, absmax: number): number {
  return absmax > 0 ? f(value / absmax) : 0;
}

/**
 * bitsandbytes 8-bit blockwise AdamW (spec §8.4, kOptimizerStatic8bit2StateBlockwise): per block of 256,
 * dequantize m (signed map) and v (unsigned map), update them in f32, write the new block maxima, step
 * p += stepSize·m/(sqrt(v) + c2·eps), then p *= 1 − lr·wd (after the step, bnb's order), and requantize.
 * A non-finite gradient element resets its m and v to 0 and leaves its parameter untouched.
 */
export function adamw8bitReference(
  p: Float32Array,
  g: Float32Array,
  st: Blockwise8bitStates,
  qmap1: Float32Array,
  qmap2: Float32Array,
  n: number,
  s: AdamW8bitScalars,
): void {
  const { state1, absmax1 } = st;
  const state2 = st.state2!;
  const absmax2 = st.absmax2!;
  const m = new Float32Array(BLOCK8);
  const v = new Float32Array(BLOCK8);
  for (let b = 0, start = 0; start < n; b++, start += BLOCK8) {
    const len = Math.min(BLOCK8, n - start);
    let max1 = 0;
    let max2 = 0;
    for (let j = 0; j < len; j++) {
      const i = start + j;
      const gi = g[i];
      if (Number.isFinite(gi)) {
        const vv = f(f(f(qmap2[state2[i]] * absmax2[b]) * s.beta2) + f(f(s.oneMinusBeta2 * gi) * gi));
        const mm = f(f(f(qmap1[state1[i]] * absmax1[b]) * s.beta1) + f(s.oneMinusBeta1 * gi));
        m[j] = mm;
        v[j] = vv;
        let pi = f(p[i] + f(s.stepSize * f(mm / f(f(Math.sqrt(vv)) + s.c2Eps))));
        if (s.decay !== 1) pi = f(pi * s.decay);
        p[i] = pi;
      } else {
        m[j] = 0;
        v[j] = 0;
      }
      max1 = maxSkippingNaN(max1, Math.abs(m[j]));
      max2 = maxSkippingNaN(max2, Math.abs(v[j]));
    }
    absmax1[b] = max1;
    absmax2[b] = max2;
    for (let j = 0; j < len; j++) {
      state1[start + j] = quantizeSigned(qmap1, scaled(m[j], max1), m[j]);
      state2[start + j] = quantize8bitValue(qmap2, scaled(v[j], max2));
    }
  }
}

/** Lion's update direction sign(c): ±1, and 0 / −0 / NaN passed through (torch.sign). */
function sign(c: number): number {
  return c > 0 ? 1 : c < 0 ? -1 : c;
}

/** Lion (lion-pytorch order): p *= 1 − lr·wd; p −= lr·sign(β1·m + (1−β1)·g); m = β2·m + (1−β2)·g. */
export function lion32Reference(p: Float32Array, g: Float32Array, m: Float32Array, n: number, s: LionScalars): void {
  for (let i = 0; i < n; i++) {
    const gi = g[i];
    const c = fmaf(s.oneMinusBeta1, gi, f(m[i] * s.beta1));
    p[i] = fmaf(s.negLr, sign(c), f(p[i] * s.decay));
    m[i] = fmaf(s.oneMinusBeta2, gi, f(m[i] * s.beta2));
  }
}

/**
 * Lion with its momentum in 8-bit blockwise state (bitsandbytes' 1-state blockwise kernel, signed map,
 * same sign fix). Non-finite gradient elements: state reset, parameter untouched (the 2-state rule).
 */
export function lion8bitReference(
  p: Float32Array,
  g: Float32Array,
  st: Blockwise8bitStates,
  qmap1: Float32Array,
  n: number,
  s: LionScalars,
): void {
  const { state1, absmax1 } = st;
  const m = new Float32Array(BLOCK8);
  for (let b = 0, start = 0; start < n; b++, start += BLOCK8) {
    const len = Math.min(BLOCK8, n - start);
    let max1 = 0;
    for (let j = 0; j < len; j++) {
      const i = start + j;
      const gi = g[i];
      if (Number.isFinite(gi)) {
        const mOld = f(qmap1[state1[i]] * absmax1[b]);
        const c = f(f(mOld * s.beta1) + f(s.oneMinusBeta1 * gi));
        p[i] = f(f(p[i] * s.decay) + f(s.negLr * sign(c)));
        m[j] = f(f(mOld * s.beta2) + f(s.oneMinusBeta2 * gi));
      } else {
        m[j] = 0;
      }
      max1 = maxSkippingNaN(max1, Math.abs(m[j]));
    }
    absmax1[b] = max1;
    for (let j = 0; j < len; j++) state1[start + j] = quantizeSigned(qmap1, scaled(m[j], max1), m[j]);
  }
}

/** torch.optim.SGD: d = g + wd·p; buf = d (first) or momentum·buf + (1−dampening)·d; nesterov; p −= lr·d. */
export function sgdReference(
  p: Float32Array,
  g: Float32Array,
  buf: Float32Array | null,
  n: number,
  s: SgdScalars,
): void {
  for (let i = 0; i < n; i++) {
    let d = s.weightDecay !== 0 ? fmaf(s.weightDecay, p[i], g[i]) : g[i];
    if (buf !== null) {
      const b = s.first ? d : fmaf(s.oneMinusDampening, d, f(buf[i] * s.momentum));
      buf[i] = b;
      d = s.nesterov ? fmaf(s.momentum, b, d) : b;
    }
    p[i] = fmaf(s.negLr, d, p[i]);
  }
}

/** Σ x² accumulated in f64 (the global-norm pass). */
export function sumSquaresReference(x: Float32Array, n: number): number {
  let acc = 0;
  for (let i = 0; i < n; i++) acc += x[i] * x[i];
  return acc;
}

/** x *= factor (f32), in place. */
export function scaleReference(x: Float32Array, n: number, factor: number): void {
  const k = f(factor);
  for (let i = 0; i < n; i++) x[i] = f(x[i] * k);
}
