/**
 * 4-bit weights on a backend: validating `Backend.quantize4bit`'s arguments, the host implementation of
 * it (@qlora/nf4, the reference every native quantizer is compared with), and uploading a QuantState4bit
 * into backend buffers. Used by the reference backend and by Linear4bit.
 */
import { DYNAMIC_MAP_SIGNED, type QuantState4bit, quantize4bit } from "@qlora/nf4";
import { TensorError } from "../errors";
import type { Backend, QuantizedWeightBuffers, QuantizeWeightOptions } from "./types";

const BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096];
const NF4_DTYPE = { f32: "float32", bf16: "bfloat16", f16: "float16" } as const;

/** Throws a TensorError naming the argument when `input`/`options` do not describe a quantizable weight. */
export function checkQuantizeWeightArgs(
  input: Float32Array | Uint16Array,
  o: QuantizeWeightOptions,
  where: string,
): void {
  const bad = (arg: string, expected: string, got: unknown) =>
    new TensorError("BAD_ARGUMENT", `${where}: ${arg} must be ${expected}, got ${JSON.stringify(got)}`);
  if (o?.quantType !== "nf4" && o?.quantType !== "fp4") throw bad("options.quantType", '"nf4" or "fp4"', o?.quantType);
  if (!BLOCKSIZES.includes(o.blocksize)) throw bad("options.blocksize", `one of ${BLOCKSIZES.join(", ")}`, o.blocksize);
  if (typeof o.doubleQuant !== "boolean") throw bad("options.doubleQuant", "a boolean", o.doubleQuant);
  const wantF32 = o.dtype === "f32";
  if (!wantF32 && o.dtype !== "bf16" && o.dtype !== "f16")
    throw bad("options.dtype", '"f32", "bf16" or "f16"', o.dtype);
  if (wantF32 ? !(input instanceof Float32Array) : !(input instanceof Uint16Array))
    throw bad(
      "input",
      wantF32 ? "a Float32Array (dtype f32)" : `a Uint16Array of ${o.dtype} bit patterns`,
      (input as object)?.constructor?.name ?? typeof input,
    );
  const [n, k] = o.shape ?? [];
  if (o.shape?.length !== 2 || !Number.isInteger(n) || !Number.isInteger(k) || n < 0 || k < 0)
    throw bad("options.shape", "[n, k] of non-negative integers", o.shape);
  if (n * k !== input.length)
    throw new TensorError(
      "BAD_ARGUMENT",
      `${where}: options.shape [${n}, ${k}] holds ${n * k} elements, the input has ${input.length}`,
    );
}

/** A QuantState4bit (host arrays) copied into buffers of `be`. */
export function uploadQuantState(be: Backend, state: QuantState4bit): QuantizedWeightBuffers {
  const [n, k] = state.shape;
  const a = state.absmax;
  const absmax: QuantizedWeightBuffers["absmax"] =
    a instanceof Float32Array
      ? { kind: "f32", values: be.fromHost(a, "f32") }
      : {
          kind: "nested",
          qabsmax: be.fromHost(a.qabsmax, "u8"),
          code: be.fromHost(a.code, "f32"),
          nestedAbsmax: be.fromHost(a.nestedAbsmax, "f32"),
          nestedBlocksize: a.nestedBlocksize,
          offset: a.offset,
        };
  return {
    quantType: state.quantType,
    blocksize: state.blocksize,
    shape: [n, k],
    codes: be.fromHost(state.packed, "u8"),
    absmax,
  };
}

/** `Backend.quantize4bit` on the host: @qlora/nf4's quantize4bit, then one copy into `be`'s buffers. */
export function quantizeWeightOnHost(
  be: Backend,
  input: Float32Array | Uint16Array,
  options: QuantizeWeightOptions,
): QuantizedWeightBuffers {
  checkQuantizeWeightArgs(input, options, `${be.name}.quantize4bit`);
  const state = quantize4bit(input, {
    quantType: options.quantType,
    blocksize: options.blocksize,
    doubleQuant: options.doubleQuant,
    shape: [...options.shape],
    dtype: NF4_DTYPE[options.dtype],
  });
  return uploadQuantState(be, state);
}

/** The signed dynamic map double quantization uses (the `nested_quant_map`), for native quantizers. */
export const NESTED_QUANT_MAP: Float32Array = DYNAMIC_MAP_SIGNED;
