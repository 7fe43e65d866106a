// Linear4bit holds one copy of its 4-bit state: the state tensors (the bitsandbytes key set) wrap the very
// buffers the kernels read, quantState is a view of them, and nothing else stays behind. Linear4bit.quantize
// goes straight into backend buffers (the backend's quantize4bit when it has one) with the same bytes as
// @qlora/nf4's quantize4bit + packQuantState.
import { f32ToBf16, packQuantState, quantize4bit } from "@qlora/nf4";
import { describe, expect, it } from "vitest";
import { createReferenceBackend, referenceBackend } from "../backend/reference";
import type { Backend, HostBuffer } from "../backend/types";
import { TensorError } from "../errors";
import { Linear4bit } from "./linear4bit";

function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return (s / 2 ** 31 - 0.5) * 0.1;
  });
}
const bytes = (t: { buffer: unknown }) => {
  const d = (t.buffer as HostBuffer).data;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
};

describe("Linear4bit state", () => {
  it("quantize(bf16) gives packQuantState(quantize4bit(...))'s keys, order, dtypes, shapes and bytes", () => {
    for (const [quantType, doubleQuant, blocksize] of [
      ["nf4", true, 64],
      ["fp4", false, 128],
    ] as const) {
      const bf16 = f32ToBf16(values(24 * 96 + 0, 7));
      const m = Linear4bit.quantize(bf16, { shape: [24, 96], dtype: "bf16", quantType, doubleQuant, blocksize });
      const want = packQuantState(
        quantize4bit(bf16, { shape: [24, 96], dtype: "bfloat16", quantType, doubleQuant, blocksize }),
        {
          param: "weight",
        },
      );
      const sd = m.stateDict();
      expect(Object.keys(sd)).toEqual(Object.keys(want));
      for (const [key, rec] of Object.entries(want)) {
        expect([...sd[key].shape], key).toEqual(rec.shape);
        expect(sd[key].dtype, key).toBe(rec.dtype === "U8" ? "u8" : "f32");
        expect(bytes(sd[key]), key).toEqual(rec.bytes);
      }
      m.dispose();
    }
  });

  it("holds one copy: the backend counts only the key-set tensors, and quantState views their memory", () => {
    const be = createReferenceBackend({ name: "one-copy" });
    const before = be.memoryStats().currentBytes;
    const m = Linear4bit.quantize(values(64 * 256, 3), { shape: [64, 256], doubleQuant: true, backend: be });
    const sd = m.stateDict();
    const held = Object.values(sd).reduce((a, t) => a + bytes(t).byteLength, 0);
    expect(be.memoryStats().currentBytes - before).toBe(held);
    // 8192 code bytes + 256 qabsmax + 4 nested absmax + 1024 nested map + 64 quant map + the JSON
    expect(held - sd["weight.quant_state.bitsandbytes__nf4"].shape[0]).toBe(8192 + 256 + 4 + 1024 + 64);
    const st = m.quantState;
    expect(st.packed.buffer).toBe((sd.weight.buffer as HostBuffer).data.buffer);
    expect(st.absmax).not.toBeInstanceOf(Float32Array);
    if (!(st.absmax instanceof Float32Array))
      expect(st.absmax.qabsmax.buffer).toBe((sd["weight.absmax"].buffer as HostBuffer).data.buffer);
    m.dispose();
    expect(be.memoryStats().currentBytes).toBe(before);
  });

  it("built from a QuantState4bit it copies once and keeps no reference to the caller's arrays", () => {
    const state = quantize4bit(values(32 * 64, 5), { shape: [32, 64], doubleQuant: true });
    const m = new Linear4bit(state, { backend: referenceBackend });
    const packed = state.packed.slice();
    state.packed.fill(0);
    expect(m.quantState.packed).toEqual(packed);
    expect(m.quantState.packed.buffer).not.toBe(state.packed.buffer);
    m.dispose();
  });

  it("uses the backend's own quantize4bit when it has one", () => {
    let calls = 0;
    const spy: Backend = {
      ...referenceBackend,
      quantize4bit(input, options) {
        calls++;
        return referenceBackend.quantize4bit!(input, options);
      },
    };
    const m = Linear4bit.quantize(values(8 * 64, 9), { shape: [8, 64], backend: spy });
    expect(calls).toBe(1);
    m.dispose();
  });

  it("without a backend quantizer: @qlora/nf4 on the host, the same bytes", () => {
    const { quantize4bit: _, ...plain } = referenceBackend;
    const v = values(8 * 64, 4);
    const m = Linear4bit.quantize(v, { shape: [8, 64], doubleQuant: true, backend: plain as Backend });
    const want = quantize4bit(v, { shape: [8, 64], doubleQuant: true });
    expect(m.quantState.packed).toEqual(want.packed);
    expect(m.quantState.absmax).toEqual(want.absmax);
    m.dispose();
  });

  it("bad input is a TensorError naming the argument", () => {
    expect(() => Linear4bit.quantize(new Uint16Array(64), { shape: [1, 64] })).toThrowError(/options\.dtype must say/);
    expect(() => Linear4bit.quantize(new Float32Array(64), { shape: [2, 64] })).toThrowError(TensorError);
    expect(() => Linear4bit.quantize(new Float32Array(64), { shape: [2, 64] })).toThrowError(
      /options\.shape \[2, 64\] holds 128 elements, the input has 64/,
    );
    expect(() => Linear4bit.quantize(new Float32Array(64), { shape: [1, 64], blocksize: 48 })).toThrowError(
      /options\.blocksize/,
    );
  });
});
