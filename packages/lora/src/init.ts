/**
 * Adapter initialisations with PEFT's math (peft/tuners/lora/layer.py reset_lora_parameters, pissa_init,
 * olora_init, loftq_init). Each returns A [r, in], B [out, r] as f32 values and, for the methods that
 * move the principal part out of the base, the new base weight [out, in].
 */
import { dequantize4bit, quantize4bit } from "@qlora/nf4";
import type { Generator } from "@qlora/tensor";
import type { InitLoraWeights, LoftQConfig } from "./config";
import { LoraError } from "./errors";
import { type Mat, leftCols, mat, matmul, qr, svd, svdLowRank, topRows } from "./linalg";

export interface InitResult {
  readonly a: Float32Array;
  readonly b: Float32Array;
  /** Replacement base weight [out, in] (PiSSA/OLoRA residual, LoftQ's dequantized NF4), else null. */
  readonly baseWeight: Float32Array | null;
}

export interface InitArgs {
  readonly method: InitLoraWeights;
  readonly r: number;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly scaling: number;
  readonly generator: Generator;
  /** The base weight [out, in] as f32 (dequantized for a 4-bit base); needed by pissa/olora/loftq. */
  readonly weight?: () => Float32Array;
  readonly loftq?: Partial<LoftQConfig>;
}

/** U(−1/√fan_in, 1/√fan_in): kaiming_uniform_(a=√5), nn.Linear's default init. */
function kaimingUniform(n: number, fanIn: number, gen: Generator): Float32Array {
  const bound = 1 / Math.sqrt(fanIn);
  const u = gen.uniform(n);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (u[i] * 2 - 1) * bound;
  return out;
}

function toF32(m: Mat): Float32Array {
  return Float32Array.from(m.data);
}

export function initLora(args: InitArgs): InitResult {
  const { method, r, inFeatures: inF, outFeatures: outF, generator: gen } = args;
  if (method === true) return { a: kaimingUniform(r * inF, inF, gen), b: new Float32Array(outF * r), baseWeight: null };
  if (method === false)
    return { a: kaimingUniform(r * inF, inF, gen), b: kaimingUniform(outF * r, r, gen), baseWeight: null };
  if (method === "gaussian") {
    const z = gen.normal(r * inF);
    const a = new Float32Array(r * inF);
    for (let i = 0; i < a.length; i++) a[i] = z[i] / r;
    return { a, b: new Float32Array(outF * r), baseWeight: null };
  }
  if (!args.weight)
    throw new LoraError("BAD_CONFIG", `LoraConfig.init_lora_weights: "${method}" needs the base weight`);
  if (r > Math.min(inF, outF))
    throw new LoraError(
      "BAD_CONFIG",
      `LoraConfig.r: ${r} exceeds min(in, out) = ${Math.min(inF, outF)}, which "${method}" needs`,
    );
  const W = mat(outF, inF, args.weight());
  if (method === "olora") return olora(W, r, args.scaling);
  if (method === "loftq") return loftq(W, r, args.loftq?.loftq_iter ?? 1);
  const niter = /^pissa_niter_(\d+)$/.exec(method);
  return pissa(W, r, args.scaling, niter ? Number(niter[1]) : null, gen);
}

/** W = U S Vᵀ; S_r /= s; A = √S_r·V_rᵀ, B = U_r·√S_r; base ← W − s·B·A. */
export function pissa(W: Mat, r: number, s: number, niter: number | null, gen: Generator): InitResult {
  const d = niter === null ? svd(W) : svdLowRank(W, r, niter, (n) => gen.normal(n));
  const a = mat(r, W.cols);
  const b = mat(W.rows, r);
  for (let k = 0; k < r; k++) {
    const root = Math.sqrt(d.s[k] / s);
    for (let j = 0; j < W.cols; j++) a.data[k * W.cols + j] = root * d.vt.data[k * d.vt.cols + j];
    for (let i = 0; i < W.rows; i++) b.data[i * r + k] = d.u.data[i * d.u.cols + k] * root;
  }
  return { a: toF32(a), b: toF32(b), baseWeight: residual(W, b, a, s) };
}

/** W = Q R; B = Q[:, :r], A = R[:r]; base ← W − s·B·A. */
export function olora(W: Mat, r: number, s: number): InitResult {
  const { q, r: R } = qr(W);
  const b = leftCols(q, r);
  const a = topRows(R, r);
  return { a: toF32(a), b: toF32(b), baseWeight: residual(W, b, a, s) };
}

function residual(W: Mat, b: Mat, a: Mat, s: number): Float32Array {
  const ba = matmul(b, a);
  const out = new Float32Array(W.data.length);
  for (let i = 0; i < out.length; i++) out[i] = W.data[i] - s * ba.data[i];
  return out;
}

/** NF4 (blocks of 64, no double quantization) round trip: bitsandbytes' Params4bit as LoftQ uses it. */
export function nf4RoundTrip(values: Float32Array, shape: [number, number]): Float32Array {
  const st = quantize4bit(values, { quantType: "nf4", blocksize: 64, doubleQuant: false, shape, dtype: "float32" });
  return dequantize4bit(st, "float32") as Float32Array;
}

/**
 * LoftQ (peft/utils/loftq_utils.py loftq_init): alternate Q = nf4(W − B·A) and the rank-r SVD of W − Q;
 * A = √S·Vᵀ, B = U·√S (no division by the scaling, as in PEFT). The base becomes the dequantized Q.
 */
export function loftq(W: Mat, r: number, iters: number): InitResult {
  const shape: [number, number] = [W.rows, W.cols];
  const w32 = Float32Array.from(W.data);
  let res: Float32Array = Float32Array.from(w32);
  let q: Float32Array = new Float32Array(0);
  let a = mat(r, W.cols);
  let b = mat(W.rows, r);
  for (let it = 0; it < iters; it++) {
    q = nf4RoundTrip(res, shape);
    const diff = mat(W.rows, W.cols);
    for (let i = 0; i < diff.data.length; i++) diff.data[i] = w32[i] - q[i];
    const d = svd(diff);
    a = mat(r, W.cols);
    b = mat(W.rows, r);
    for (let k = 0; k < r; k++) {
      const root = Math.sqrt(d.s[k]);
      for (let j = 0; j < W.cols; j++) a.data[k * W.cols + j] = root * d.vt.data[k * d.vt.cols + j];
      for (let i = 0; i < W.rows; i++) b.data[i * r + k] = d.u.data[i * d.u.cols + k] * root;
    }
    const ba = matmul(b, a);
    res = new Float32Array(w32.length);
    for (let i = 0; i < res.length; i++) res[i] = w32[i] - ba.data[i];
  }
  return { a: toF32(a), b: toF32(b), baseWeight: q };
}
