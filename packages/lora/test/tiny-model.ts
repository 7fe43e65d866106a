// A tiny Llama-shaped module tree (HF names) for injection tests: forward reads children through child(),
// so LoRA layers swapped in with setSubmodule take effect.
import { Generator, Linear, Linear4bit, Module, ModuleList, type Tensor, add } from "@qlora/tensor";

export const HIDDEN = 64;

class Attn extends Module {
  constructor(gen: Generator, quant: boolean) {
    super();
    for (const n of ["q_proj", "k_proj", "v_proj", "o_proj"]) {
      const lin = new Linear(HIDDEN, HIDDEN, { bias: n !== "o_proj", generator: gen });
      if (quant && n !== "k_proj") {
        const q = Linear4bit.fromWeight(lin.weight, { doubleQuant: true });
        lin.dispose();
        this.registerModule(n, q);
      } else this.registerModule(n, lin);
    }
  }
  forward(x: Tensor): Tensor {
    const f = (n: string, t: Tensor) => this.child<Linear>(n).forward(t);
    const q = f("q_proj", x);
    const k = f("k_proj", x);
    const v = f("v_proj", x);
    const s1 = add(q, k);
    const s2 = add(s1, v);
    const o = f("o_proj", s2);
    for (const t of [q, k, v, s1, s2]) t.dispose();
    return o;
  }
}

class Mlp extends Module {
  constructor(gen: Generator) {
    super();
    this.registerModule("up_proj", new Linear(HIDDEN, 2 * HIDDEN, { bias: false, generator: gen }));
    this.registerModule("down_proj", new Linear(2 * HIDDEN, HIDDEN, { bias: false, generator: gen }));
  }
  forward(x: Tensor): Tensor {
    const u = this.child<Linear>("up_proj").forward(x);
    const r = u.relu();
    const d = this.child<Linear>("down_proj").forward(r);
    u.dispose();
    r.dispose();
    return d;
  }
}

class Block extends Module {
  constructor(gen: Generator, quant: boolean) {
    super();
    this.registerModule("self_attn", new Attn(gen, quant));
    this.registerModule("mlp", new Mlp(gen));
  }
  forward(x: Tensor): Tensor {
    const a = this.child<Attn>("self_attn").forward(x);
    const h = add(x, a);
    const m = this.child<Mlp>("mlp").forward(h);
    const out = add(h, m);
    for (const t of [a, h, m]) t.dispose();
    return out;
  }
}

class Inner extends Module {
  constructor(gen: Generator, layers: number, quant: boolean) {
    super();
    this.registerModule("layers", new ModuleList(Array.from({ length: layers }, () => new Block(gen, quant))));
  }
  forward(x: Tensor): Tensor {
    let h = x.clone();
    for (const b of this.child<ModuleList<Block>>("layers")) {
      const n = b.forward(h);
      h.dispose();
      h = n;
    }
    return h;
  }
}

/** model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{up,down}_proj}, lm_head. quant: q/v/o as Linear4bit. */
export class TinyModel extends Module {
  constructor(seed = 1, layers = 2, quant = false) {
    super();
    const gen = new Generator(seed);
    this.registerModule("model", new Inner(gen, layers, quant));
    this.registerModule("lm_head", new Linear(HIDDEN, 10, { bias: false, generator: gen }));
  }
  forward(x: Tensor): Tensor {
    const h = this.child<Inner>("model").forward(x);
    const y = this.child<Linear>("lm_head").forward(h);
    h.dispose();
    return y;
  }
}
