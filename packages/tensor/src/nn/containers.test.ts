import { describe, expect, it } from "vitest";
import { TensorError } from "../errors";
import { randn } from "../tensor";
import { ModuleList } from "./containers";
import { Linear } from "./layers";
import { Module } from "./module";

class Attn extends Module {
  constructor() {
    super();
    this.registerModule("q_proj", new Linear(4, 4, { bias: false }));
  }
  forward(x: ReturnType<typeof randn>) {
    return this.child<Linear>("q_proj").forward(x);
  }
}

class Doubler extends Module {
  forward(x: ReturnType<typeof randn>) {
    return x.mul(2);
  }
}

describe("ModuleList and submodule paths", () => {
  it("names children 0, 1, … so state-dict keys match torch", () => {
    const layers = new ModuleList([new Attn(), new Attn()]);
    const root = new Module();
    root.registerModule("layers", layers);
    expect(Object.keys(root.stateDict())).toEqual(["layers.0.q_proj.weight", "layers.1.q_proj.weight"]);
    expect([...root.namedModules()].map(([n]) => n)).toEqual([
      "",
      "layers",
      "layers.0",
      "layers.0.q_proj",
      "layers.1",
      "layers.1.q_proj",
    ]);
    expect(layers.length).toBe(2);
    expect([...layers]).toHaveLength(2);
    expect(() => layers.at(2)).toThrow(/\[0, 2\)/);
  });

  it("getSubmodule walks dotted paths and names the missing part", () => {
    const root = new Module();
    const layers = root.registerModule("layers", new ModuleList([new Attn()]));
    expect(root.getSubmodule("layers.0")).toBe(layers.at(0));
    expect(root.getSubmodule("")).toBe(root);
    expect(() => root.getSubmodule("layers.0.k_proj")).toThrow(TensorError);
    expect(() => root.getSubmodule("layers.0.k_proj")).toThrow(/"layers.0" has no child "k_proj"/);
  });

  it("setSubmodule replaces a child and forward uses the replacement", () => {
    const root = new Module();
    const layers = root.registerModule("layers", new ModuleList([new Attn()]));
    const x = randn([2, 4]);
    const before = layers.at(0).forward(x).toArray();
    const old = root.setSubmodule("layers.0.q_proj", new Doubler());
    expect(old).toBeInstanceOf(Linear);
    const after = layers.at(0).forward(x).toArray();
    expect(after).toEqual(x.toArray().map((v) => v * 2));
    expect(after).not.toEqual(before);
    expect(Object.keys(root.stateDict())).toEqual([]);
    expect(() => root.setSubmodule("layers.0.nope", new Doubler())).toThrow(/no module to replace/);
  });
});

describe("layers adopt given tensors (checkpoint loading)", () => {
  it("Linear/Embedding/RMSNorm take init tensors and check their shapes", async () => {
    const { Embedding, RMSNorm } = await import("./layers");
    const { tensor } = await import("../tensor");
    const w = tensor([1, 2, 3, 4, 5, 6], { shape: [3, 2] });
    const lin = new Linear(2, 3, { init: { weight: w } });
    expect(lin.weight).toBe(w);
    expect(lin.bias).toBeNull();
    expect(lin.forward(tensor([1, 1], { shape: [1, 2] })).toArray()).toEqual([3, 7, 11]);
    expect(() => new Linear(3, 2, { init: { weight: w } })).toThrow(/Linear weight \[3,2\] must be \[2,3\]/);
    expect(new Embedding(3, 2, { init: w }).weight).toBe(w);
    expect(() => new RMSNorm(4, 1e-6, { init: tensor([1, 2]) })).toThrow(/RMSNorm weight \[2\] must be \[4\]/);
  });
});
