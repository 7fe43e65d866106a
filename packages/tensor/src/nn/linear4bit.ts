/**
 * Linear4bit: a frozen linear layer whose weight stays in @qlora/nf4's format (NF4 or FP4, with or
 * without double quantization) and is used through backend.matmul4bit (dequantized tile by tile inside
 * the matmul, never whole). Backward gives the input gradient only (dX = dY · W, bitsandbytes MatMul4Bit);
 * the optional bias is an ordinary parameter (frozen by default, as QLoRA leaves it).
 * stateDict writes the bitsandbytes key set (weight, weight.absmax, weight.quant_map, …,
 * weight.quant_state.bitsandbytes__nf4), so saving it is writing a bitsandbytes checkpoint.
 */
import {
  dequantize4bit,
  FP4_CODE,
  type FloatDType,
  NF4_CODE,
  quantize4bit,
  quantStateJson,
  type QuantState4bit,
  type QuantType,
  type TensorRecord,
  type TensorRecords,
  unpackQuantState,
} from "@qlora/nf4";
import { checkQuantizeWeightArgs, uploadQuantState } from "../backend/quantize-weight";
import type { Backend, Buffer, HostBuffer, QuantizedWeightBuffers, QuantizeWeightOptions } from "../backend/types";
import { TensorError } from "../errors";
import { matmul4bit } from "../ops";
import type { QuantizedWeight } from "../ops";
import { fromBuffer, keep, resolveBackend, tensor, Tensor } from "../tensor";
import { Module } from "./module";

export interface Linear4bitOptions {
  readonly backend?: Backend | string;
  readonly device?: string;
  /** Bias [out] (any float dtype); registered as a parameter with requiresGrad false. */
  readonly bias?: Tensor | null;
}

/** Options of `Linear4bit.quantize`: the weight's layout and the 4-bit format (bitsandbytes defaults). */
export interface Linear4bitQuantizeOptions extends Linear4bitOptions {
  /** [outFeatures, inFeatures]. */
  readonly shape: readonly [number, number];
  /** What the input holds (default f32 for a Float32Array; bf16/f16 bit patterns must say which). */
  readonly dtype?: "f32" | "bf16" | "f16";
  readonly quantType?: QuantType;
  readonly blocksize?: number;
  readonly doubleQuant?: boolean;
}

/** A 4-bit weight already in buffers of the module's backend (the module takes them over). */
export interface Linear4bitBuffers {
  readonly buffers: QuantizedWeightBuffers;
  /** The dtype of the weight before quantization (recorded in the bitsandbytes quant_state). */
  readonly dtype: FloatDType;
}

const FLOAT_DTYPE = { f32: "float32", bf16: "bfloat16", f16: "float16" } as const;

function isHost(b: Buffer): b is HostBuffer {
  return b.device === "cpu" && (b as HostBuffer).data !== undefined;
}

/** A buffer's contents as host values: the buffer's own array on host backends (no copy), else a copy. */
function hostView(be: Backend, b: Buffer) {
  return isHost(b) ? b.data : be.toHost(b);
}
function hostF32(be: Backend, b: Buffer): Float32Array {
  const d = hostView(be, b);
  return d instanceof Float32Array ? d : Float32Array.from(d); // f64 test mode holds f32 as Float64Array
}

/** The QuantState4bit the buffers hold (host views where the buffers are host memory). */
function stateOf(be: Backend, w: QuantizedWeightBuffers, dtype: FloatDType): QuantState4bit {
  const a = w.absmax;
  return {
    quantType: w.quantType,
    blocksize: w.blocksize,
    dtype,
    shape: [...w.shape],
    packed: hostView(be, w.codes) as Uint8Array,
    absmax:
      a.kind === "f32"
        ? hostF32(be, a.values)
        : {
            qabsmax: hostView(be, a.qabsmax) as Uint8Array,
            nestedAbsmax: hostF32(be, a.nestedAbsmax),
            code: hostF32(be, a.code),
            nestedBlocksize: a.nestedBlocksize,
            offset: a.offset,
          },
  };
}

/**
 * The module's state tensors: the bitsandbytes key set of `packQuantState` (weight, weight.absmax, …, in its
 * order, dtypes and shapes), wrapping the very buffers the kernels read. They are the only copy of the 4-bit
 * state: stateDict() hands them out, `quantState` reads them.
 */
function stateTensors(
  be: Backend,
  w: QuantizedWeightBuffers,
  dtype: FloatDType,
  hostState?: QuantState4bit,
): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const wrap = (key: string, b: Buffer, shape: number[]) => out.set(key, keep(fromBuffer(b, be, shape, b.dtype)));
  const elements = w.shape[0] * w.shape[1];
  const blocks = Math.ceil(elements / w.blocksize);
  wrap("weight", w.codes, [Math.floor((elements + 1) / 2), 1]);
  const a = w.absmax;
  wrap("weight.absmax", a.kind === "f32" ? a.values : a.qabsmax, [blocks]);
  const lut = w.quantType === "nf4" ? NF4_CODE : FP4_CODE;
  out.set("weight.quant_map", keep(tensor(Float32Array.from(lut), { shape: [16], backend: be })));
  if (a.kind === "nested") {
    wrap("weight.nested_absmax", a.nestedAbsmax, [Math.ceil(blocks / a.nestedBlocksize)]);
    wrap("weight.nested_quant_map", a.code, [256]);
  }
  // the JSON needs the state's arrays only for validation: the caller's host copy when there is one (a device
  // backend would otherwise download the weight for it)
  const json = new TextEncoder().encode(quantStateJson(hostState ?? stateOf(be, w, dtype)));
  out.set(
    `weight.quant_state.bitsandbytes__${w.quantType}`,
    keep(tensor(json, { shape: [json.length], dtype: "u8", backend: be })),
  );
  return out;
}

export class Linear4bit extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  private _dtype: FloatDType;
  private _weight: QuantizedWeight;
  private _stateTensors: Map<string, Tensor>;
  readonly bias: Tensor | null;

  /**
   * From a QuantState4bit (copied into the backend's buffers; the module keeps no reference to it), or from
   * 4-bit buffers already on the backend (`{ buffers, dtype }`, e.g. from `Backend.quantize4bit`), which the
   * module takes over.
   */
  constructor(state: QuantState4bit | Linear4bitBuffers, options: Linear4bitOptions = {}) {
    super();
    const shape = "buffers" in state ? state.buffers.shape : state.shape;
    if (shape.length !== 2)
      throw new TensorError(
        "BAD_SHAPE",
        `Linear4bit: quant state shape ${JSON.stringify(shape)} must be 2-D [out, in]`,
      );
    [this.outFeatures, this.inFeatures] = shape;
    const bias = options.bias ?? null;
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== this.outFeatures))
      throw new TensorError(
        "BAD_SHAPE",
        `Linear4bit: bias ${JSON.stringify(bias.shape)} must be [${this.outFeatures}]`,
      );
    const be = resolveBackend(options);
    const buffers = "buffers" in state ? state.buffers : uploadQuantState(be, state);
    this._dtype = state.dtype;
    this._stateTensors = stateTensors(be, buffers, this._dtype, "buffers" in state ? undefined : state);
    this._weight = { backend: be, buffers };
    this.bias = bias ? this.registerParameter("bias", bias, false) : null;
  }

  /**
   * Quantize a weight [out, in] straight into the backend's buffers: the backend's native quantizer when it
   * has one (`Backend.quantize4bit`, byte-exact with @qlora/nf4), else @qlora/nf4 on the host and one copy.
   * bf16/f16 input (Uint16Array bit patterns) is read as stored.
   */
  static quantize(input: Float32Array | Uint16Array, options: Linear4bitQuantizeOptions): Linear4bit {
    const be = resolveBackend(options);
    if (options.dtype === undefined && !(input instanceof Float32Array))
      throw new TensorError(
        "BAD_ARGUMENT",
        'Linear4bit.quantize: options.dtype must say what a Uint16Array holds ("bf16" or "f16")',
      );
    const o: QuantizeWeightOptions = {
      quantType: options.quantType ?? "nf4",
      blocksize: options.blocksize ?? 64,
      doubleQuant: options.doubleQuant ?? false,
      dtype: options.dtype ?? "f32",
      shape: options.shape,
    };
    const layer = { ...options, backend: be };
    if (be.quantize4bit)
      return new Linear4bit({ buffers: be.quantize4bit(input, o), dtype: FLOAT_DTYPE[o.dtype] }, layer);
    // no quantizer on the backend: @qlora/nf4 on the host, one upload
    checkQuantizeWeightArgs(input, o, "Linear4bit.quantize");
    const state = quantize4bit(input, { ...o, shape: [...o.shape], dtype: FLOAT_DTYPE[o.dtype] });
    return new Linear4bit(state, layer);
  }

  /** Quantize a float weight [out, in] (f32 values, or a Tensor) into a Linear4bit. */
  static fromWeight(
    weight: Tensor | { values: Float32Array; shape: [number, number] },
    options: Linear4bitOptions & { quantType?: QuantType; blocksize?: number; doubleQuant?: boolean } = {},
  ): Linear4bit {
    let values: Float32Array;
    let shape: [number, number];
    if (weight instanceof Tensor) {
      if (weight.ndim !== 2)
        throw new TensorError("BAD_SHAPE", `Linear4bit.fromWeight: weight ${JSON.stringify(weight.shape)} must be 2-D`);
      values = Float32Array.from(weight.toTypedArray());
      shape = [weight.shape[0], weight.shape[1]];
    } else {
      values = weight.values;
      shape = weight.shape;
    }
    return Linear4bit.quantize(values, { ...options, shape, dtype: "f32" });
  }

  /**
   * The 4-bit state as @qlora/nf4's QuantState4bit. On host backends its arrays are views of the module's
   * own buffers (no copy: valid while the module is alive and not disposed; copy what you keep); on a device
   * backend they are copies.
   */
  get quantState(): QuantState4bit {
    return stateOf(this._weight.backend, this._weight.buffers, this._dtype);
  }
  get quantizedWeight(): QuantizedWeight {
    return this._weight;
  }

  forward(x: Tensor): Tensor {
    const y = matmul4bit(x, this._weight);
    if (!this.bias) return y;
    const out = y.add(this.bias);
    y.dispose();
    return out;
  }

  /** The full dequantized weight [out, in] as f32 (for tests and export, not for the forward). */
  dequantizedWeight(): Tensor {
    const w = dequantize4bit(this.quantState, "float32") as Float32Array;
    return tensor(w, { shape: [this.outFeatures, this.inFeatures], backend: this._weight.backend });
  }

  /** The bitsandbytes key set, as the module's own tensors (the same ones on every call: never dispose them). */
  protected override saveExtraState(prefix: string, out: Record<string, Tensor>): void {
    for (const [key, t] of this._stateTensors) out[prefix + key] = t;
  }

  protected override loadExtraState(
    prefix: string,
    sd: Record<string, Tensor>,
    used: Set<string>,
    missing: string[],
  ): void {
    const recs: TensorRecords = {};
    for (const [key, t] of Object.entries(sd)) {
      if (key === `${prefix}weight` || key.startsWith(`${prefix}weight.`)) {
        recs[key.slice(prefix.length)] = tensorToRecord(key, t);
        used.add(key);
      }
    }
    if (!recs.weight) {
      missing.push(`${prefix}weight`);
      return;
    }
    const state = unpackQuantState(recs, { param: "weight" });
    const expected = [this.outFeatures, this.inFeatures];
    if (state.shape.join() !== expected.join())
      throw new TensorError(
        "STATE_SHAPE",
        `loadStateDict: "${prefix}weight" holds shape ${JSON.stringify(state.shape)}, the module expects ${JSON.stringify(expected)}`,
      );
    const be = this._weight.backend;
    const buffers = uploadQuantState(be, state);
    const fresh = stateTensors(be, buffers, state.dtype, state);
    for (const t of this._stateTensors.values()) t.dispose();
    this._dtype = state.dtype;
    this._stateTensors = fresh;
    this._weight = { backend: be, buffers };
  }

  protected override disposeExtra(): void {
    for (const t of this._stateTensors.values()) t.dispose();
    this._stateTensors.clear();
  }
}

function tensorToRecord(key: string, t: Tensor): TensorRecord {
  const shape = [...t.shape];
  if (t.dtype === "u8") return { dtype: "U8", shape, bytes: Uint8Array.from(t.toTypedArray()) };
  if (t.dtype === "f32") {
    const f = Float32Array.from(t.toTypedArray());
    return { dtype: "F32", shape, bytes: new Uint8Array(f.buffer) };
  }
  throw new TensorError("STATE_DTYPE", `loadStateDict: "${key}" is ${t.dtype}; 4-bit state tensors must be u8 or f32`);
}
