import { describe, expect, it } from "vitest";
import { memoryStats } from "../src/memory";
import { ModuleList } from "../src/nn/containers";
import { Dropout, Embedding, Linear, RMSNorm } from "../src/nn/layers";
import { Linear4bit } from "../src/nn/linear4bit";
import { Module } from "../src/nn/module";
import { randn, tensor, zeros } from "../src/tensor";

class WithBuffer extends Module {
  constructor() {
    super();
    this.registerParameter("scale", tensor([1, 2, 3]));
    this.registerBuffer("running", zeros([3]));
    this.registerModule("inner", new Linear(3, 2));
  }
}

const modules: [string, () => Module][] = [
  ["Linear", () => new Linear(17, 9)],
  ["Linear without bias", () => new Linear(5, 3, { bias: false })],
  ["Embedding", () => new Embedding(11, 6)],
  ["RMSNorm", () => new RMSNorm(13)],
  ["Dropout", () => new Dropout(0.1)],
  ["Linear4bit nf4", () => Linear4bit.fromWeight(randn([8, 128]))],
  [
    "Linear4bit fp4 double quant + bias",
    () => Linear4bit.fromWeight(randn([8, 128]), { quantType: "fp4", doubleQuant: true, bias: randn([8]) }),
  ],
  ["ModuleList", () => new ModuleList([new Linear(4, 4), Linear4bit.fromWeight(randn([4, 64]))])],
  ["a module with a buffer and a child", () => new WithBuffer()],
];

describe("the stateDict contract holds for every module", () => {
  for (const [name, make] of modules)
    it(name, () => {
      const m = make();
      const before = memoryStats("cpu").currentBytes;
      const a = m.stateDict();
      const b = m.stateDict();
      // the module's own tensors: the same objects on every call, no new tensor memory
      expect(Object.keys(b)).toEqual(Object.keys(a));
      for (const k of Object.keys(a)) expect(b[k]).toBe(a[k]);
      expect(memoryStats("cpu").currentBytes).toBe(before);
      for (const t of Object.values(a)) expect(t.disposed).toBe(false);
      // loading its own state dict back is a no-op that keeps working
      const r = m.loadStateDict(a);
      expect(r.missingKeys).toEqual([]);
      expect(r.unexpectedKeys).toEqual([]);
      // disposing the module frees them: the memory the module held is given back
      const live = Object.values(m.stateDict());
      m.dispose();
      for (const t of live) expect(t.disposed).toBe(true);
    });
  it("Linear4bit's state tensors are the buffers its kernels read (no second copy)", () => {
    const m = Linear4bit.fromWeight(randn([16, 64]), { doubleQuant: true });
    const sd = m.stateDict();
    const w = m.quantizedWeight.buffers;
    expect(sd.weight.buffer).toBe(w.codes);
    expect(w.absmax.kind).toBe("nested");
    if (w.absmax.kind === "nested") {
      expect(sd["weight.absmax"].buffer).toBe(w.absmax.qabsmax);
      expect(sd["weight.nested_absmax"].buffer).toBe(w.absmax.nestedAbsmax);
      expect(sd["weight.nested_quant_map"].buffer).toBe(w.absmax.code);
    }
    // and a load replaces them (the old ones are freed, the new ones serve both)
    const other = Linear4bit.fromWeight(randn([16, 64]), { doubleQuant: true });
    m.loadStateDict(other.stateDict());
    expect(sd.weight.disposed).toBe(true);
    expect(m.stateDict().weight.buffer).toBe(m.quantizedWeight.buffers.codes);
    const x = randn([3, 64]);
    expect(m.forward(x).toArray()).toEqual(other.forward(x).toArray());
    m.dispose();
    other.dispose();
  });
});
