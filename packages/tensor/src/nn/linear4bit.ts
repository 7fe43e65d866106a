/**
 * Linear4bit: a frozen linear layer whose weight stays in @qlora/nf4's format (NF4 or FP4, with or
 * without double quantization) and is used through backend.matmul4bit (dequantized tile by tile inside
 * the matmul, never whole). Backward gives the input gradient only (dX = dY · W, bitsandbytes MatMul4Bit);
 * the optional bias is an ordinary parameter (frozen by default, as QLoRA leaves it).
 * stateDict writes the bitsandbytes key set (weight, weight.absmax, weight.quant_map, …,
 * weight.quant_state.bitsandbytes__nf4), so saving it is writing a bitsandbytes checkpoint.
 */
import { dequantize4bit, packQuantState, quantize4bit, unpackQuantState } from "@qlora/nf4";
import type { QuantState4bit, QuantType, TensorRecord, TensorRecords } from "@qlora/nf4";
import type { Backend, Buffer, QuantizedWeightBuffers } from "../backend/types";
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

/**
 * The module's state tensors: the bitsandbytes key set of `packQuantState` (weight, weight.absmax, …) as
 * tensors on `be`, owned by the module. They are both what stateDict() hands out and what the kernels read
 * (the QuantizedWeightBuffers below point at their buffers): one copy, one owner.
 */
function stateTensors(be: Backend, state: QuantState4bit): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [key, rec] of Object.entries(packQuantState(state, { param: "weight" })))
    out.set(key, keep(recordToTensor(rec, be)));
  return out;
}

function weightBuffers(state: QuantState4bit, t: Map<string, Tensor>): QuantizedWeightBuffers {
  const [n, k] = state.shape;
  const buf = (key: string): Buffer => t.get(key)!.buffer;
  const a = state.absmax;
  const absmax: QuantizedWeightBuffers["absmax"] =
    a instanceof Float32Array
      ? { kind: "f32", values: buf("weight.absmax") }
      : {
          kind: "nested",
          qabsmax: buf("weight.absmax"),
          code: buf("weight.nested_quant_map"),
          nestedAbsmax: buf("weight.nested_absmax"),
          nestedBlocksize: a.nestedBlocksize,
          offset: a.offset,
        };
  return { quantType: state.quantType, blocksize: state.blocksize, shape: [n, k], codes: buf("weight"), absmax };
}

export class Linear4bit extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  private _state: QuantState4bit;
  private _weight: QuantizedWeight;
  private _stateTensors: Map<string, Tensor>;
  readonly bias: Tensor | null;

  constructor(state: QuantState4bit, options: Linear4bitOptions = {}) {
    super();
    if (state.shape.length !== 2)
      throw new TensorError(
        "BAD_SHAPE",
        `Linear4bit: quant state shape ${JSON.stringify(state.shape)} must be 2-D [out, in]`,
      );
    [this.outFeatures, this.inFeatures] = state.shape;
    const be = resolveBackend(options);
    this._state = state;
    this._stateTensors = stateTensors(be, state);
    this._weight = { backend: be, buffers: weightBuffers(state, this._stateTensors) };
    const bias = options.bias ?? null;
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== this.outFeatures))
      throw new TensorError(
        "BAD_SHAPE",
        `Linear4bit: bias ${JSON.stringify(bias.shape)} must be [${this.outFeatures}]`,
      );
    this.bias = bias ? this.registerParameter("bias", bias, false) : null;
  }

  /** Quantize a float weight [out, in] (f32 values, or a Tensor) into a Linear4bit. */
  static fromWeight(
    weight: Tensor | { values: Float32Array; shape: [number, number] },
    options: Linear4bitOptions & { quantType?: QuantType; blocksize?: number; doubleQuant?: boolean } = {},
  ): Linear4bit {
    let values: Float32Array;
    let shape: number[];
    if (weight instanceof Tensor) {
      if (weight.ndim !== 2)
        throw new TensorError("BAD_SHAPE", `Linear4bit.fromWeight: weight ${JSON.stringify(weight.shape)} must be 2-D`);
      values = Float32Array.from(weight.toTypedArray());
      shape = [...weight.shape];
    } else {
      values = weight.values;
      shape = weight.shape;
    }
    const state = quantize4bit(values, {
      quantType: options.quantType ?? "nf4",
      blocksize: options.blocksize ?? 64,
      doubleQuant: options.doubleQuant ?? false,
      shape,
      dtype: "float32",
    });
    return new Linear4bit(state, options);
  }

  get quantState(): QuantState4bit {
    return this._state;
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
    const w = dequantize4bit(this._state, "float32") as Float32Array;
    return tensor(w, { shape: this._state.shape, backend: this._weight.backend });
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
    if (state.shape.join() !== this._state.shape.join())
      throw new TensorError(
        "STATE_SHAPE",
        `loadStateDict: "${prefix}weight" holds shape ${JSON.stringify(state.shape)}, the module expects ${JSON.stringify(this._state.shape)}`,
      );
    const be = this._weight.backend;
    const fresh = stateTensors(be, state);
    for (const t of this._stateTensors.values()) t.dispose();
    this._state = state;
    this._stateTensors = fresh;
    this._weight = { backend: be, buffers: weightBuffers(state, fresh) };
  }

  protected override disposeExtra(): void {
    for (const t of this._stateTensors.values()) t.dispose();
    this._stateTensors.clear();
  }
}

function recordToTensor(rec: TensorRecord, be: Backend): Tensor {
  const b = rec.bytes;
  if (rec.dtype === "U8") return tensor(Uint8Array.from(b), { shape: rec.shape, dtype: "u8", backend: be });
  if (rec.dtype === "F32") return tensor(new Float32Array(b.slice().buffer), { shape: rec.shape, backend: be });
  const u16 = new Uint16Array(b.slice().buffer);
  const dtype = rec.dtype === "BF16" ? "bf16" : "f16";
  return fromBuffer(be.fromHost(u16, dtype), be, rec.shape, dtype);
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
