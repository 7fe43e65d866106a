// State placement (paged / 8-bit thresholds), state bytes, gradient clipping, LoRA+ groups, name-keyed
// state, typed errors, and the state files (validation, fuzzed JSON parser).
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Backend, type DType, referenceBackend, type Tensor, tensor, zeros } from "@qlora/tensor";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  AdamW,
  clipGradNorm,
  createOptimizer,
  Lion,
  loraPlusGroups,
  OptimError,
  PAGED_MIN_ELEMENTS,
  parseStateJson,
  SGD,
} from "../src/index";
import { BACKENDS, host, normals } from "./helpers";

function param(n: number, seed: number, be: Backend = referenceBackend, shape = [n]): Tensor {
  return tensor(normals(n, seed, 0.1), { shape, backend: be, requiresGrad: true });
}
function grad(p: Tensor, seed: number, scale = 0.01): void {
  p.grad = tensor(normals(p.size, seed, scale), { shape: p.shape, backend: p.backend });
}

/** The reference backend with an allocState that records what went through it (as CUDA pages them). */
function recordingBackend(): { be: Backend; paged: { dtype: DType; length: number }[] } {
  const paged: { dtype: DType; length: number }[] = [];
  const be: Backend = {
    ...referenceBackend,
    name: "recording",
    allocState(dtype, length) {
      paged.push({ dtype, length });
      return referenceBackend.alloc(dtype, length);
    },
  };
  return { be, paged };
}

describe("state placement", () => {
  it("paged: states of parameters with ≥ 1e5 elements go through Backend.allocState, nothing else does", () => {
    const { be, paged } = recordingBackend();
    const big = param(PAGED_MIN_ELEMENTS, 1, be);
    const small = param(PAGED_MIN_ELEMENTS - 1, 2, be);
    const opt = new AdamW(
      [
        ["big", big],
        ["small", small],
      ],
      { bits: 8, paged: true },
    );
    grad(big, 3);
    grad(small, 4);
    opt.step();
    // only the two u8 per-element states of "big"; its absmax (and the maps) are ordinary allocations
    expect(paged).toEqual([
      { dtype: "u8", length: PAGED_MIN_ELEMENTS },
      { dtype: "u8", length: PAGED_MIN_ELEMENTS },
    ]);
    expect(opt.stateOf("big")).toMatchObject({ paged: true, bits: 8 });
    expect(opt.stateOf("small")).toMatchObject({ paged: false, bits: 8 });
    opt.dispose();
  });

  it("without paged nothing goes through allocState; the same API on a backend without it (plain memory)", () => {
    const { be, paged } = recordingBackend();
    const p = param(PAGED_MIN_ELEMENTS, 5, be);
    const opt = new AdamW([["p", p]]);
    grad(p, 6);
    opt.step();
    expect(paged).toEqual([]);
    const q = param(PAGED_MIN_ELEMENTS, 5);
    const o2 = new AdamW([["q", q]], { paged: true }); // referenceBackend has no allocState
    grad(q, 6);
    o2.step();
    expect(o2.stateOf("q")?.paged).toBe(true);
    expect(host(q)).toEqual(host(p));
    opt.dispose();
    o2.dispose();
  });

  it("8-bit state bytes ≤ 0.27× of 32-bit state; tensors under 4096 elements stay 32-bit", () => {
    const shapes = [
      [16, 4096],
      [1024, 16],
      [16, 14336],
      [63, 64], // 4032 < 4096: 32-bit state
    ];
    const mk = () => shapes.map((s, i) => [`p${i}`, param(s[0] * s[1], i, referenceBackend, s)] as [string, Tensor]);
    const a = mk();
    const b = mk();
    const o32 = new AdamW(a);
    const o8 = new AdamW(b, { bits: 8 });
    for (const [, p] of [...a, ...b]) grad(p, 9);
    o32.step();
    o8.step();
    expect(o8.stateOf("p3")?.bits).toBe(32);
    expect(o8.stateOf("p0")?.bits).toBe(8);
    const ratio = o8.stateBytes() / o32.stateBytes();
    expect(ratio).toBeLessThanOrEqual(0.27);
    expect(ratio).toBeGreaterThan(0.25); // 2 bytes + 2 absmax floats per 256 of 8 bytes, plus the small tensor
    o32.dispose();
    o8.dispose();
  });
});

describe.each(BACKENDS.map((b) => [b.name, b] as const))("clipGradNorm on %s", (_n, be) => {
  it("returns the global norm (f64 accumulation) and scales every gradient by maxNorm/(norm+1e-6)", () => {
    const ps = [param(1000, 1, be), param(77, 2, be), param(4097, 3, be)];
    ps.forEach((p, i) => {
      grad(p, 10 + i, 0.5);
    });
    ps.push(param(5, 4, be)); // no gradient: ignored
    const before = ps.slice(0, 3).map((p) => host(p.grad!).slice());
    let sum = 0;
    for (const g of before) for (const x of g) sum += x * x;
    const norm = clipGradNorm(ps, 1.0);
    expect(Math.abs(norm - Math.sqrt(sum))).toBeLessThanOrEqual(1e-12 * norm);
    expect(norm).toBeGreaterThan(1);
    const coef = Math.fround(1.0 / (norm + 1e-6));
    ps.slice(0, 3).forEach((p, i) => {
      expect(host(p.grad!)).toEqual(before[i].map((x) => Math.fround(x * coef)));
    });
    // now below the threshold: norm returned, nothing scaled
    const after = host(ps[0].grad!).slice();
    expect(clipGradNorm(ps, 10)).toBeCloseTo(1.0, 5);
    expect(host(ps[0].grad!)).toEqual(after);
  });
  it("a non-finite gradient gives a non-finite norm and scales nothing", () => {
    const p = param(300, 1, be);
    const g = normals(300, 2, 10);
    g[7] = Number.POSITIVE_INFINITY;
    p.grad = tensor(g, { shape: [300], backend: be });
    expect(clipGradNorm([["p", p]], 1)).toBe(Number.POSITIVE_INFINITY);
    expect(host(p.grad)).toEqual(g);
  });
});

describe("groups, names and LoRA+", () => {
  it("loraPlusGroups puts lora_B parameters at lr·ratio, chosen by name", () => {
    const named: [string, Tensor][] = [
      ["model.layers.0.self_attn.q_proj.lora_A.default.weight", param(8, 1)],
      ["model.layers.0.self_attn.q_proj.lora_B.default.weight", param(8, 2)],
      ["model.embed_tokens.lora_embedding_B.default", param(8, 3)],
      ["model.norm.weight", param(8, 4)],
    ];
    const opt = new AdamW(loraPlusGroups(named, { lr: 2e-4, ratio: 16, weightDecay: 0.1 }));
    expect(opt.paramGroups.map((g) => [g.lr, g.weightDecay, g.names.length])).toEqual([
      [2e-4, 0.1, 2],
      [2e-4 * 16, 0.1, 2],
    ]);
    expect(opt.paramGroups[1].names).toEqual([named[1][0], named[2][0]]);
  });

  it("a group's lr can be changed between steps (schedulers) and is saved with the state", () => {
    const p = param(10, 1);
    const opt = new SGD([["p", p]], { lr: 0.1 });
    opt.paramGroups[0].lr = 0.05;
    grad(p, 2);
    const g = host(p.grad!).slice();
    const before = host(p).slice();
    opt.step();
    expect(host(p)).toEqual(before.map((x, i) => Math.fround(x - Math.fround(0.05) * g[i])));
    expect(opt.stateDict().paramGroups[0].hyper.lr).toBe(0.05);
  });

  it("state follows the NAME: a different tensor object under the same name picks it up", () => {
    const a = param(300, 1);
    const o1 = new AdamW([["w", a]]);
    grad(a, 2);
    o1.step();
    const b = tensor(host(a), { shape: [300], requiresGrad: true });
    const o2 = new AdamW([["w", b]]);
    o2.loadStateDict(o1.stateDict());
    expect(o2.stateOf("w")?.step).toBe(1);
    expect(referenceBackend.toHost(o2.stateOf("w")!.buffers.exp_avg)).toEqual(
      referenceBackend.toHost(o1.stateOf("w")!.buffers.exp_avg),
    );
  });
});

describe("typed errors name the argument", () => {
  it("bad parameters, duplicates and hyperparameters", () => {
    const p = param(4, 1);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(OptimError);
        return `${(e as OptimError).code}: ${(e as Error).message}`;
      }
      return "no error";
    };
    expect(code(() => new AdamW([["p", tensor([1, 2], { dtype: "bf16" })]]))).toMatch(
      /BAD_PARAM.*"p".*dense f32.*bf16/,
    );
    expect(code(() => new AdamW([["p", param(8, 2, referenceBackend, [2, 4]).transpose()]]))).toMatch(
      /BAD_PARAM.*"p".*a view/,
    );
    expect(
      code(
        () =>
          new AdamW([
            ["a", p],
            ["b", p],
          ]),
      ),
    ).toMatch(/DUPLICATE_PARAM.*"b" is the same tensor as "a"/);
    expect(
      code(
        () =>
          new AdamW([
            ["a", p],
            ["a", param(4, 3)],
          ]),
      ),
    ).toMatch(/DUPLICATE_PARAM.*"a" appears twice/);
    expect(code(() => new AdamW([["p", p]], { betas: [0.9, 1.5] }))).toMatch(/BAD_ARGUMENT: params\.betas/);
    expect(code(() => new AdamW([{ params: [["p", p]], lr: -1 }]))).toMatch(/paramGroups\[0\]|params\.lr/);
    expect(code(() => new AdamW([{ params: [["p", p]], momentum: 0.9 } as never]))).toMatch(
      /momentum: not a hyperparameter of AdamW/,
    );
    expect(code(() => new SGD([["p", p]], { nesterov: true }))).toMatch(/nesterov.*momentum > 0/);
    expect(code(() => new Lion([["p", p]], { bits: 4 as never }))).toMatch(/options\.bits: expected 8 or 32/);
    expect(code(() => clipGradNorm([p], 0))).toMatch(/maxNorm/);
    // Tensors instead of pairs: a short description, not the tensor's whole buffer as JSON.
    const big = zeros([512, 512]);
    const message = code(() => new AdamW([big] as never));
    expect(message).toMatch(/expected \[name, tensor\] pairs .*, got a Tensor of shape \[512, 512\]/);
    expect(message.length).toBeLessThan(300);
    const frozen = zeros([4, 4], { dtype: "bf16" });
    expect(code(() => new AdamW([["embed", frozen]]))).toMatch(
      /"embed" must be a dense f32 tensor, got bf16 \[4,4\]; it does not require gradients: pass only the trainable parameters/,
    );
  });

  it("loading state of another optimizer or for unknown names is refused before anything changes", () => {
    const p = param(10, 1);
    const adam = new AdamW([["p", p]]);
    grad(p, 2);
    adam.step();
    const lion = new Lion([["p", p]]);
    expect(() => lion.loadStateDict(adam.stateDict())).toThrow(/saved by AdamW, this optimizer is Lion/);
    const other = new AdamW([["q", param(10, 3)]]);
    expect(() => other.loadStateDict(adam.stateDict())).toThrow(/state for "p", which is not a parameter/);
    const eight = new AdamW([["p", param(10, 4)]], { bits: 8, minEightBitSize: 1 });
    expect(() => eight.loadStateDict(adam.stateDict())).toThrow(/32-bit, this optimizer keeps 8-bit/);
    expect(eight.stateOf("p")).toBeUndefined();
  });
});

describe("state files", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  async function saved(): Promise<{ dir: string; opt: AdamW }> {
    const dir = await mkdtemp(join(tmpdir(), "qlora-optim-io-"));
    dirs.push(dir);
    const p = param(5000, 1);
    const opt = new AdamW([["w", p]], { bits: 8 });
    grad(p, 2);
    opt.step();
    await opt.save(dir);
    return { dir, opt };
  }

  it("save creates a missing directory, as save_pretrained does", async () => {
    const { dir, opt } = await saved();
    const nested = join(dir, "checkpoint-100", "optim");
    await opt.save(nested);
    const again = new AdamW([["w", param(5000, 1)]], { bits: 8 });
    await again.load(nested);
    expect(again.stateDict().state.w?.step).toBe(1);
  });

  it("a saved state that does not fit the optimizer names the directory it came from", async () => {
    const { dir } = await saved();
    const two = new AdamW([{ params: [["w", param(5000, 1)]] }, { params: [["v", param(8, 2)]], lr: 1e-4 }], {
      bits: 8,
    });
    await expect(two.load(dir)).rejects.toThrow(
      `${dir}: state dict has 1 parameter groups, this optimizer 2 (groups come from how the optimizer is built: LoRA+ makes two); build it as the saved run did`,
    );
    const thirtyTwo = new AdamW([["w", param(5000, 1)]]);
    await expect(thirtyTwo.load(dir)).rejects.toThrow(`${dir}: state of "w" is 8-bit, this optimizer keeps 32-bit`);
  });

  it("a JSON from one save and tensors from another are refused (save id)", async () => {
    const a = await saved();
    const b = await saved();
    await writeFile(join(a.dir, "optimizer.json"), await readFile(join(b.dir, "optimizer.json")));
    await expect(a.opt.load(a.dir)).rejects.toThrow(/saveId .* does not match/);
  });

  it("a corrupt optimizer.json names the file and the key", async () => {
    const { dir, opt } = await saved();
    const file = join(dir, "optimizer.json");
    const j = JSON.parse(await readFile(file, "utf8"));
    j.state.w.step = -3;
    await writeFile(file, JSON.stringify(j));
    await expect(opt.load(dir)).rejects.toThrow(/optimizer\.json: state\["w"\]\.step must be a non-negative integer/);
    await writeFile(file, "{ not json");
    await expect(opt.load(dir)).rejects.toThrow(/optimizer\.json: not valid JSON/);
  });

  it("fuzz: parseStateJson returns a validated object or throws OptimError, never anything else", async () => {
    const { dir } = await saved();
    const valid = await readFile(join(dir, "optimizer.json"), "utf8");
    const check = (text: string) => {
      try {
        parseStateJson(text, "fuzz.json");
      } catch (e) {
        if (!(e instanceof OptimError) || e.code !== "STATE_FILE") throw e;
      }
    };
    fc.assert(fc.property(fc.json(), check), { numRuns: 500 });
    fc.assert(
      fc.property(fc.nat(valid.length - 1), fc.string({ maxLength: 4 }), (at, s) =>
        check(valid.slice(0, at) + s + valid.slice(at + 1)),
      ),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(
        fc.constantFrom("format", "optimizer", "saveId", "tensorsFile", "options", "paramGroups", "state"),
        fc.jsonValue(),
        (key, value) => check(JSON.stringify({ ...JSON.parse(valid), [key]: value })),
      ),
      { numRuns: 500 },
    );
  });
});

describe("backends without the optimizer ops", () => {
  // Looks like a device backend (device ≠ "cpu"): no TypeScript fallback on its buffers.
  const device: Backend = { ...referenceBackend, name: "fakedevice", device: "fake:0" };
  it("AdamW uses the backend's own adamwStepInPlace; Lion/SGD say which kernel is missing", () => {
    const p = param(50, 1, device);
    const q = param(50, 1);
    grad(p, 2);
    grad(q, 2);
    new AdamW([["p", p]]).step();
    new AdamW([["q", q]]).step();
    // the reference backend's adamwStepInPlace computes in f64: close to, not bitwise, the f32 kernel
    const a = host(p);
    const b = host(q);
    for (let i = 0; i < 50; i++) expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(1e-7 * Math.max(1, Math.abs(b[i])));
    expect(() => new Lion([["p", p]]).step()).toThrow(/backend "fakedevice" has no lion32 update kernel/);
    expect(() => new SGD([["p", p]]).step()).toThrow(/no sgd update kernel/);
  });
  it("clipping reads the norm through toHost and scales with a tensor multiply", () => {
    const p = param(300, 1, device);
    grad(p, 2, 1);
    const g = host(p.grad!).slice();
    const norm = clipGradNorm([p], 0.5);
    const coef = Math.fround(0.5 / (norm + 1e-6));
    expect(host(p.grad!)).toEqual(g.map((x) => Math.fround(x * coef)));
  });
});

describe("createOptimizer (Hugging Face / Axolotl optim names)", () => {
  it("maps names to class, bits and paging, and rejects unknown names", () => {
    const p = param(5000, 1);
    const o = createOptimizer("paged_adamw_8bit", [["p", p]], { lr: 2e-4 });
    expect(o).toBeInstanceOf(AdamW);
    expect([o.bits, o.paged, o.paramGroups[0].lr]).toEqual([8, true, 2e-4]);
    const l = createOptimizer("lion_8bit", [["p", p]]);
    expect(l).toBeInstanceOf(Lion);
    expect([l.bits, l.paged]).toEqual([8, false]);
    expect(createOptimizer("adamw_torch", [["p", p]]).bits).toBe(32);
    expect(createOptimizer("sgd", [["p", p]], { lr: 0.1, momentum: 0.9 })).toBeInstanceOf(SGD);
    expect(() => createOptimizer("adafactor", [["p", p]])).toThrow(
      /optimizer "adafactor": expected one of adamw_torch/,
    );
    expect(() => createOptimizer("adamw_torch", [["p", p]], { bits: 8 } as never)).toThrow(/come from the name/);
  });
});
