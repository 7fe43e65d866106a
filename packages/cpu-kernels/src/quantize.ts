// Backend.quantize4bit on the native addon (csrc/quantize_nf4.cc): bitsandbytes NF4/FP4 quantization of a
// host weight straight into buffers from the shared host allocator, byte-exact with @qlora/nf4's
// quantize4bit + doubleQuantize (the reference backend's implementation; test/quantize-nf4.test.ts).
// bf16/f16 input is read as stored (widened a block at a time inside the kernel), on the cpu thread pool.
import {
  type Backend,
  checkQuantizeWeightArgs,
  NESTED_QUANT_MAP,
  type QuantizedWeightBuffers,
  type QuantizeWeightOptions,
} from "@qlora/tensor";
import type { HostBuffer } from "@qlora/tensor";
import type { NativeModule } from "./load";

/** The N-API surface of csrc/quantize_nf4.cc. */
export interface QuantizeNative {
  /** isa: -1 auto (AVX2 when the CPU has it), 0 scalar, 1 AVX2 (a RangeError where the CPU lacks it). */
  quantize4bit(
    input: Float32Array | Uint16Array,
    inputKind: 0 | 1 | 2,
    quantType: 0 | 1,
    blocksize: number,
    packed: Uint8Array,
    absmax: Float32Array,
    isa?: -1 | 0 | 1,
  ): void;
  /** Returns the float32 offset (mean of absmax). */
  doubleQuantize8bit(absmax: Float32Array, code: Float32Array, qabsmax: Uint8Array, nestedAbsmax: Float32Array): number;
}

const INPUT_KIND = { f32: 0, bf16: 1, f16: 2 } as const;

/** The native quantizer when the loaded addon has it (an older binary may not). */
export function quantizeNative(native: NativeModule): QuantizeNative | undefined {
  const q = native as unknown as Partial<QuantizeNative>;
  return typeof q.quantize4bit === "function" && typeof q.doubleQuantize8bit === "function"
    ? (q as QuantizeNative)
    : undefined;
}

/**
 * `quantize4bit` for a host backend `host` (its allocator owns the output buffers). `isa` forces a kernel
 * path (tests); the default picks AVX2 when present.
 */
export function createQuantizeOp(
  nat: QuantizeNative,
  host: Pick<Backend, "allocUninit" | "alloc" | "fromHost" | "free">,
  isa: -1 | 0 | 1 = -1,
): (input: Float32Array | Uint16Array, options: QuantizeWeightOptions) => QuantizedWeightBuffers {
  const uninit = (dtype: "u8" | "f32", length: number) => (host.allocUninit ?? host.alloc)(dtype, length) as HostBuffer;
  return (input, options) => {
    checkQuantizeWeightArgs(input, options, "cpu.quantize4bit");
    const [n, k] = options.shape;
    const count = n * k;
    const nb = Math.ceil(count / options.blocksize);
    const codes = uninit("u8", Math.ceil(count / 2));
    const absmax = uninit("f32", nb);
    nat.quantize4bit(
      input,
      INPUT_KIND[options.dtype],
      options.quantType === "nf4" ? 0 : 1,
      options.blocksize,
      codes.data as Uint8Array,
      absmax.data as Float32Array,
      isa,
    );
    const base = { quantType: options.quantType, blocksize: options.blocksize, shape: [n, k] as const, codes };
    if (!options.doubleQuant) return { ...base, absmax: { kind: "f32", values: absmax } };
    const qabsmax = uninit("u8", nb);
    const nestedAbsmax = uninit("f32", Math.ceil(nb / 256));
    const code = host.fromHost(NESTED_QUANT_MAP, "f32") as HostBuffer;
    const offset = nat.doubleQuantize8bit(
      absmax.data as Float32Array,
      code.data as Float32Array,
      qabsmax.data as Uint8Array,
      nestedAbsmax.data as Float32Array,
    );
    host.free(absmax);
    return { ...base, absmax: { kind: "nested", qabsmax, code, nestedAbsmax, nestedBlocksize: 256, offset } };
  };
}

/** `{ quantize4bit }` for the cpu backend when the addon has the kernel, else nothing (the op is optional). */
export function quantizeOpsOf(
  native: NativeModule,
  host: Pick<Backend, "allocUninit" | "alloc" | "fromHost" | "free">,
): Pick<Backend, "quantize4bit"> {
  const nat = quantizeNative(native);
  return nat ? { quantize4bit: createQuantizeOp(nat, host) } : {};
}
