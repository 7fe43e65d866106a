/** 4-bit data types of bitsandbytes' `quantize_4bit`. */
export type QuantType = "nf4" | "fp4";
/** bitsandbytes' dtype strings for the original tensor. */
export type FloatDType = "float32" | "float16" | "bfloat16";

/** Double-quantized ("nested", "compress_statistics") absmax of a 4-bit tensor (spec §5). */
export interface NestedAbsmax {
  /** [nBlocks] indices into `code`. */
  qabsmax: Uint8Array;
  /** [ceil(nBlocks / nestedBlocksize)] float32 absmax of the 8-bit blocks. */
  nestedAbsmax: Float32Array;
  /** 256-entry signed dynamic map (the stored `nested_quant_map`). */
  code: Float32Array;
  /** 256. */
  nestedBlocksize: number;
  /** The float32 mean subtracted before 8-bit quantization (Math.fround'ed). */
  offset: number;
}

/** A bitsandbytes 4-bit quantized tensor. */
export interface QuantState4bit {
  quantType: QuantType;
  blocksize: number;
  /** dtype of the original tensor. */
  dtype: FloatDType;
  /** Original shape, e.g. [out, in]. */
  shape: number[];
  /** ceil(n/2) bytes, element 2j in the high nibble of byte j. */
  packed: Uint8Array;
  /** Float32Array[ceil(n/blocksize)] when not double-quantized. */
  absmax: Float32Array | NestedAbsmax;
}

export interface Quantize4bitOptions {
  /** Default "nf4". */
  quantType?: QuantType;
  /** 32, 64, ..., 4096; default 64. */
  blocksize?: number;
  /** Double-quantize the absmax (bitsandbytes `compress_statistics`); default false. */
  doubleQuant?: boolean;
  /** Original shape; default [n]. Its product must equal n. */
  shape?: number[];
  /**
   * dtype of the original tensor. Required ("bfloat16" | "float16") for Uint16Array input;
   * default "float32" for Float32Array input (which may also be labelled bf16/f16 if it holds such values).
   */
  dtype?: FloatDType;
}

/** 8-bit blockwise quantized values (bitsandbytes `quantize_blockwise`). */
export interface Blockwise8bit {
  /** [n] indices into the code map. */
  q: Uint8Array;
  /** [ceil(n/blocksize)] float32 block absmax. */
  absmax: Float32Array;
}

export interface Blockwise8bitOptions {
  /** 256-entry ascending map; default DYNAMIC_MAP_SIGNED. */
  code?: Float32Array;
  /** 64, 128, ..., 4096 (bitsandbytes' CUDA set); default 4096 (bnb's default). Optimizer states use 256. */
  blocksize?: number;
}
