/**
 * Forward variants: KV-cache generation equals full recomputation (64 greedy tokens, also past a sliding
 * window, which reaches the attention op only when the keys outnumber it), gradient checkpointing and the
 * chunked lm_head + cross-entropy give the same loss and gradients as the plain path, the loss path's memory
 * does not grow with the vocabulary beyond one chunk, state-dict keys are checkpoint keys, and a setSubmodule
 * replacement (LoRA injection) changes the forward.
 */
import { join } from "node:path";
import { openShardedSafetensors } from "@qlora/formats";
import { getBackend, Linear, Module, noGrad, type Tensor, tensor } from "@qlora/tensor";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { PARITY_MODELS, writeTinyModel } from "../scripts/make-tiny-models";
import { type CausalLM, loadModel } from "../src";
import { readFixture, relErr, tempDir } from "./helpers";

const dir = tempDir();
const spec = (name: string) => PARITY_MODELS.find((s) => s.name === name)!;
beforeAll(async () => {
  for (const s of PARITY_MODELS) await writeTinyModel(join(dir.path, s.name), s);
});
afterAll(() => dir.remove());

function argmaxRows(logits: Tensor): number[] {
  const [rows, v] = [logits.shape[0], logits.shape[logits.ndim - 1]];
  const a = logits.toTypedArray();
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let j = 1; j < v; j++) if (a[r * v + j] > a[r * v + best]) best = j;
    out.push(best);
  }
  return out;
}

describe("KV cache", () => {
  it("batch 2: prefill + 70 single steps (capacity grows past 64) equal the full forward", async () => {
    const { model } = await loadModel(join(dir.path, "qwen2"), { quantize: false });
    const all = Array.from(readFixture("qwen2").get("input_ids").data);
    const rows = [all.slice(0, 80), all.slice(128, 208)];
    const batch = (from: number, to: number) =>
      tensor(
        rows.flatMap((r) => r.slice(from, to)),
        { shape: [2, to - from], dtype: "i32" },
      );
    const cache = model.createCache();
    let logits = model.forward({ inputIds: batch(0, 10), cache }).logits!;
    for (let t = 10; t < 80; t++) logits = model.forward({ inputIds: batch(t, t + 1), cache }).logits!;
    expect(cache.length).toBe(80);
    const full = noGrad(() => model.forward({ inputIds: batch(0, 80) }).logits!);
    const last = full.narrow(1, 79, 1).reshape([2, -1]);
    expect(relErr(logits.toTypedArray(), last.toTypedArray())).toBeLessThan(1e-5);
    cache.dispose();
    expect(cache.length).toBe(0);
    model.dispose();
  });

  // mistral-swa / qwen2-swa: 76 tokens exceed their sliding windows (48 / 37): their windowed layers' caches drop
  // the keys before the window (reallocating past 64 positions) and multi-token steps mask inside it.
  it.each(["llama-linear-bias", "qwen3", "mistral-swa", "qwen2-swa"])(
    "%s (NF4): 64 greedy tokens with the cache equal full recomputation",
    async (name) => {
      const { model } = await loadModel(join(dir.path, name));
      const prompt = Array.from(readFixture(name).get("input_ids").data.slice(0, 12));
      const cache = model.createCache();
      const seq = [...prompt];
      let logits = model.forward({ inputIds: tensor(prompt, { shape: [1, prompt.length], dtype: "i32" }), cache })
        .logits!;
      let worst = 0;
      for (let step = 0; step < 64; step++) {
        const full = noGrad(
          () => model.forward({ inputIds: tensor(seq, { shape: [1, seq.length], dtype: "i32" }) }).logits!,
        );
        const last = full.narrow(1, seq.length - 1, 1).reshape([1, -1]);
        worst = Math.max(worst, relErr(logits.toTypedArray(), last.toTypedArray()));
        const next = argmaxRows(last)[0];
        expect(argmaxRows(logits)[0]).toBe(next);
        seq.push(next);
        expect(cache.length).toBe(seq.length - 1);
        logits = model.forward({ inputIds: tensor([next], { shape: [1, 1], dtype: "i32" }), cache }).logits!;
      }
      expect(worst).toBeLessThan(1e-4);
      expect(new Set(seq.slice(prompt.length)).size).toBeGreaterThan(1); // not a constant continuation
      cache.dispose();
      model.dispose();
    },
  );

  it.each([
    ["mistral", 25, 40],
    ["llama3", 25, 40],
    ["mistral-swa", 70, 100], // window 48: the step's queries see part of the prefill only
  ] as const)(
    "%s: a multi-token step after a prefill of %i (causal with offset) equals the full forward at %i",
    async (name, prefill, total) => {
      const { model } = await loadModel(join(dir.path, name), { quantize: false });
      const ids = Array.from(readFixture(name).get("input_ids").data.slice(0, total));
      const cache = model.createCache();
      model.forward({ inputIds: tensor(ids.slice(0, prefill), { shape: [1, prefill], dtype: "i32" }), cache });
      const rest = total - prefill;
      const step = model.forward({ inputIds: tensor(ids.slice(prefill), { shape: [1, rest], dtype: "i32" }), cache })
        .logits!;
      const full = noGrad(() => model.forward({ inputIds: tensor(ids, { shape: [1, total], dtype: "i32" }) }).logits!);
      expect(relErr(step.toTypedArray(), full.narrow(1, total - 1, 1).toTypedArray())).toBeLessThan(1e-5);
      cache.dispose();
      model.dispose();
    },
  );
});

describe("sliding window", () => {
  it("reaches the attention op only when there are more keys than it spans (so short runs need no windowed kernel)", async () => {
    const { model } = await loadModel(join(dir.path, "mistral-swa"), { quantize: false }); // window 48
    const ids = Array.from(readFixture("mistral-swa").get("input_ids").data.slice(0, 100));
    const be = getBackend();
    const calls: (number | undefined)[] = [];
    const realAttention = be.attention.bind(be);
    const watch = vi.spyOn(be, "attention").mockImplementation((q, k, v, o) => {
      calls.push(o.window);
      return realAttention(q, k, v, o);
    });
    try {
      const run = (n: number, cache?: ReturnType<CausalLM["createCache"]>, from = 0) =>
        noGrad(() =>
          model.forward({ inputIds: tensor(ids.slice(from, from + n), { shape: [1, n], dtype: "i32" }), cache }),
        );
      run(48);
      expect(calls).toEqual([undefined, undefined]); // two layers, 48 keys: plain causal
      calls.length = 0;
      run(49);
      expect(calls).toEqual([48, 48]);
      calls.length = 0;
      const cache = model.createCache();
      run(40, cache);
      run(8, cache, 40); // 48 keys
      run(1, cache, 48); // 49 positions, but the cache hands over the 48 the query sees: no mask needed
      run(1, cache, 49);
      expect(calls).toEqual(Array(8).fill(undefined));
      calls.length = 0;
      run(20, cache, 50); // 70 positions; the 20 queries see 47 cached + 20 new keys, 67 > 48: masked
      expect(calls).toEqual([48, 48]);
      cache.dispose();
    } finally {
      watch.mockRestore();
      model.dispose();
    }
  });
});

describe("sliding-window KV cache", () => {
  it.each([
    ["mistral-swa", [48, 48]],
    ["qwen2-swa", [0, 37]],
  ] as const)(
    "%s: 200 greedy steps keep windowed layers' buffers bounded and equal full recomputation",
    async (name, windows) => {
      const { model } = await loadModel(join(dir.path, name), { quantize: false });
      const seq = Array.from(readFixture(name).get("input_ids").data.slice(0, 12));
      const cache = model.createCache();
      let logits = model.forward({ inputIds: tensor(seq, { shape: [1, seq.length], dtype: "i32" }), cache }).logits!;
      for (let step = 0; step < 200; step++) {
        seq.push(argmaxRows(logits)[0]);
        logits = model.forward({ inputIds: tensor(seq.slice(-1), { shape: [1, 1], dtype: "i32" }), cache }).logits!;
      }
      expect(cache.length).toBe(212);
      // A windowed layer reallocates to twice the W − 1 keys it keeps (at least 64); a full layer holds all 212.
      for (const [layer, w] of windows.entries())
        expect(cache.capacity(layer)).toBe(w > 0 ? Math.max(2 * (w - 1), 64) : 256);
      const full = noGrad(
        () => model.forward({ inputIds: tensor(seq, { shape: [1, seq.length], dtype: "i32" }) }).logits!,
      );
      const last = full.narrow(1, seq.length - 1, 1).reshape([1, -1]);
      expect(relErr(logits.toTypedArray(), last.toTypedArray())).toBeLessThan(1e-5);
      expect(new Set(seq.slice(12)).size).toBeGreaterThan(1);
      cache.dispose();
      model.dispose();
    },
  );
});

/** Dense model with its norms and q_proj weights trainable, to compare gradients. */
async function trainable(name: string, options = {}): Promise<CausalLM> {
  const { model } = await loadModel(join(dir.path, name), { quantize: false, ...options });
  for (const [n, p] of model.namedParameters()) if (n.includes("norm") || n.includes("q_proj")) p.requiresGrad = true;
  return model;
}

function lossAndGrads(model: CausalLM, name: string) {
  const fx = readFixture(name);
  const out = model.forward({ inputIds: fx.tensor("input_ids"), labels: fx.tensor("labels") });
  out.loss!.backward();
  const grads = new Map<string, Float32Array>();
  for (const [n, p] of model.namedParameters()) if (p.grad) grads.set(n, p.grad.toTypedArray() as Float32Array);
  return { loss: out.loss!.item(), lossSum: out.lossSum!.item(), grads };
}

describe("training forward", () => {
  it("gradient checkpointing and a chunked loss give the same loss and gradients", async () => {
    const plain = lossAndGrads(await trainable("qwen2", { lossChunkRows: 1 << 20 }), "qwen2");
    const other = lossAndGrads(await trainable("qwen2", { gradientCheckpointing: true, lossChunkRows: 7 }), "qwen2");
    expect(relErr([other.loss], [plain.loss])).toBeLessThan(1e-6);
    expect(relErr([plain.loss], readFixture("qwen2").get("loss").data)).toBeLessThan(1e-4);
    expect(plain.grads.size).toBe(2 * 4 + 1);
    expect([...other.grads.keys()]).toEqual([...plain.grads.keys()]);
    for (const [n, g] of plain.grads) expect(relErr(other.grads.get(n)!, g), n).toBeLessThan(1e-5);
  });

  it("a head that is not a plain projection (e.g. LoRA-wrapped) takes the chunked fallback with the same loss and gradients", async () => {
    const fused = lossAndGrads(await trainable("llama", { lossChunkRows: 40 }), "llama");
    const model = await trainable("llama", { lossChunkRows: 40 });
    const inner = model.getSubmodule<Linear>("lm_head");
    class Wrapped extends Module {
      forward(x: Tensor) {
        return inner.forward(x);
      }
    }
    model.setSubmodule("lm_head", new Wrapped());
    const fallback = lossAndGrads(model, "llama");
    expect(relErr([fallback.loss], [fused.loss])).toBeLessThan(1e-6);
    expect([...fallback.grads.keys()]).toEqual([...fused.grads.keys()]);
    for (const [n, g] of fused.grads) expect(relErr(fallback.grads.get(n)!, g), n).toBeLessThan(1e-5);
  });

  it("peak memory of the loss does not grow with the vocabulary beyond one chunk", async () => {
    const peakOf = async (vocab: number, lossChunkRows = 16) => {
      const d = join(dir.path, `vocab-${vocab}`);
      await writeTinyModel(d, spec("llama"), { configOverrides: { vocab_size: vocab } });
      const { model } = await loadModel(d, { quantize: false, lossChunkRows });
      model.getSubmodule<Module>("model.norm").parameters()[0].requiresGrad = true;
      const ids = readFixture("llama")
        .get("input_ids")
        .data.map((x) => x % 320);
      const inputIds = tensor(ids, { shape: [2, 128], dtype: "i32" });
      const labels = tensor(ids, { shape: [2, 128], dtype: "i32" });
      // the backend's own counters: they also see buffers a fused op allocates internally
      const be = getBackend();
      const before = be.memoryStats().currentBytes;
      be.resetPeak();
      const out = model.forward({ inputIds, labels });
      out.loss!.backward();
      const peak = be.memoryStats().peakBytes - before;
      model.dispose();
      return peak;
    };
    const small = await peakOf(320);
    const large = await peakOf(320 * 16);
    const oneChunk = 16 * 320 * 16 * 4;
    const fullLogits = 256 * 320 * 16 * 4;
    // 16× the vocabulary adds at most a few chunk-sized buffers (logits of 16 rows and their gradient)
    expect(large - small).toBeLessThan(4 * oneChunk);
    // while one chunk of all 256 rows holds the full logits, and the measurement sees them (the loss phase's
    // peak stacks on less than the whole forward's, so the growth is a little under the logits' size)
    expect((await peakOf(320 * 16, 1 << 20)) - small).toBeGreaterThan(0.75 * fullLogits);
  });
});

describe("module tree", () => {
  it("stateDict keys are the checkpoint keys (tied lm_head left out, as in the file)", async () => {
    for (const name of ["llama", "llama3", "qwen3", "llama-linear-bias"]) {
      const d = join(dir.path, name);
      const { model } = await loadModel(d, { quantize: false });
      const st = await openShardedSafetensors(d);
      expect(Object.keys(model.stateDict()).sort()).toEqual([...st.names].sort());
      await st.close();
      model.dispose();
    }
  });

  it("replacing a projection with setSubmodule changes the forward (LoRA injection point)", async () => {
    const { model } = await loadModel(join(dir.path, "llama"));
    const inputIds = readFixture("llama").tensor("input_ids").narrow(1, 0, 16);
    const before = noGrad(() => model.forward({ inputIds }).logits!.toTypedArray());
    const path = "model.layers.0.self_attn.v_proj";
    const old = model.getSubmodule<Linear>(path);
    const zero = new Linear(64, 32, { init: { weight: tensor(new Float32Array(32 * 64), { shape: [32, 64] }) } });
    model.setSubmodule(path, zero);
    expect(model.getSubmodule(path)).toBe(zero);
    const after = noGrad(() => model.forward({ inputIds }).logits!.toTypedArray());
    expect(relErr(after, before)).toBeGreaterThan(1e-3);
    model.setSubmodule(path, old);
    expect(Array.from(noGrad(() => model.forward({ inputIds }).logits!.toTypedArray()))).toEqual(Array.from(before));
    model.dispose();
  });
});
