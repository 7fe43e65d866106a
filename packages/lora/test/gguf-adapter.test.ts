/**
 * GGUF adapter export: file layout read back with @qlora/formats (names, ne, metadata, folding, q/k
 * permutation), and llama.cpp itself (node-llama-cpp 3.21.1) running our base GGUF + adapter GGUF gives the
 * next-token probabilities our model gives with the adapter: plain LoRA, rsLoRA, alpha_pattern/rank_pattern.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GgmlType, openGguf } from "@qlora/formats";
import {
  exportGguf,
  ggufArchitecture,
  ggufTensorName,
  loadModel,
  loadTokenizer,
  permuteQkRows,
  qkPermuteHeads,
  softmax,
} from "@qlora/models";
import { Generator, type Module, noGrad, randn, tensor } from "@qlora/tensor";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GgufLoraMapping, type LoraConfigInput, LoraError, LoraModel, exportAdapterGguf } from "../src";
import { TINY, writeTinyLlama } from "./tiny-llama";

const tmp = mkdtempSync(join(tmpdir(), "qlora-lora-gguf-"));
const heads = { numHeads: TINY.heads, numKvHeads: TINY.kvHeads };
const mapping: GgufLoraMapping = {
  architecture: ggufArchitecture("LlamaForCausalLM"),
  tensorName: (p) => ggufTensorName(p),
  permuteHeads: (p) => qkPermuteHeads("LlamaForCausalLM", p, heads),
  permuteRows: (v, rows, cols, h) => permuteQkRows(v, rows, cols, h),
};

let dir = "";
let vocab = 0;
beforeAll(async () => {
  dir = join(tmp, "tiny");
  vocab = (await writeTinyLlama(dir)).info.vocabSize;
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const CASES: [string, LoraConfigInput][] = [
  ["plain LoRA", { r: 4, lora_alpha: 8, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"] }],
  ["rsLoRA", { r: 4, lora_alpha: 8, use_rslora: true, target_modules: ["q_proj", "k_proj", "up_proj"] }],
  [
    "alpha_pattern + rank_pattern",
    {
      r: 4,
      lora_alpha: 8,
      target_modules: "all-linear",
      alpha_pattern: { k_proj: 2, "layers\\.1\\.mlp\\..*": 32 },
      rank_pattern: { "layers\\.0\\.self_attn\\.q_proj": 2, gate_proj: 6 },
    },
  ],
];

async function adapted(config: LoraConfigInput, seed: number) {
  const { model } = await loadModel(dir, { quantize: false });
  const lm = LoraModel.inject(model as unknown as Module, config, { generator: new Generator(seed) });
  const g = new Generator(seed + 100);
  for (const [, layer] of lm.loraLayers()) {
    const B = layer.loraB.get("default");
    B.loadStateDict({ weight: randn(B.weight.shape, { generator: g }).mul(0.3) });
  }
  return { model, lm };
}

describe("GGUF adapter file", () => {
  it("names, shapes (ne), metadata; lora_b folded so alpha/r_i·B'·A = s_i·B·A, and q/k rows permuted", async () => {
    const { lm } = await adapted(CASES[2][1], 1);
    const path = join(tmp, "pattern.gguf");
    const res = await exportAdapterGguf(lm, path, { mapping, name: "test adapter" });
    const g = await openGguf(path);
    expect(g.get("general.architecture")).toBe("llama");
    expect(g.get("general.type")).toBe("adapter");
    expect(g.get("adapter.type")).toBe("lora");
    expect(g.get("adapter.lora.alpha")).toBe(8);
    expect(res.tensors).toBe(2 * 7 * TINY.layers);
    const layers = new Map(lm.loraLayers());
    for (const [p, layer] of layers) {
      const s = layer.settingsOf("default");
      const stem = ggufTensorName(p);
      const ia = g.info(`${stem}.weight.lora_a`);
      const ib = g.info(`${stem}.weight.lora_b`);
      expect(ia.ne).toEqual([layer.inFeatures, s.r]);
      expect(ib.ne).toEqual([s.r, layer.outFeatures]);
      const a = new Float32Array((await g.read(`${stem}.weight.lora_a`)).slice().buffer);
      let b = new Float32Array((await g.read(`${stem}.weight.lora_b`)).slice().buffer);
      expect(Array.from(a)).toEqual(Array.from(layer.loraA.get("default").weight.toTypedArray()));
      const h = qkPermuteHeads("LlamaForCausalLM", p, heads);
      if (h !== null) {
        // undo the permutation by applying its inverse: compare against permuting our B
        const ours = permuteQkRows(
          Float32Array.from(layer.loraB.get("default").weight.toTypedArray()),
          layer.outFeatures,
          s.r,
          h,
        );
        const factor = (s.scaling * s.r) / 8;
        for (let i = 0; i < b.length; i++) expect(b[i]).toBeCloseTo(ours[i] * factor, 6);
        b = ours.map((v) => v * factor);
      } else {
        const ours = layer.loraB.get("default").weight.toTypedArray();
        // llama.cpp's scale alpha/r_i times the stored B gives our s_i·B
        for (let i = 0; i < b.length; i++) expect((8 / s.r) * b[i]).toBeCloseTo(s.scaling * ours[i], 6);
      }
    }
    expect(Object.keys(res.folded)).toContain("model.layers.0.self_attn.k_proj"); // alpha 2 ≠ 8
    expect(Object.keys(res.folded)).toContain("model.layers.1.mlp.up_proj"); // alpha 32 ≠ 8
    // rank_pattern needs no folding: llama.cpp divides by each tensor's own rank
    expect(layers.get("model.layers.0.self_attn.q_proj")!.settingsOf("default").r).toBe(2);
    expect(Object.keys(res.folded)).not.toContain("model.layers.0.self_attn.q_proj");
    expect(Object.keys(res.folded)).not.toContain("model.layers.0.self_attn.v_proj");
    await g.close();
  });

  it("rsLoRA with one rank: alpha·√r is written and nothing is folded; F16 factors on request", async () => {
    const { lm } = await adapted(CASES[1][1], 2);
    const res = await exportAdapterGguf(lm, join(tmp, "rs.gguf"), { mapping });
    expect(res.alpha).toBe(16);
    expect(res.folded).toEqual({});
    await exportAdapterGguf(lm, join(tmp, "rs16.gguf"), { mapping, outType: "F16" });
    const g = await openGguf(join(tmp, "rs16.gguf"));
    expect(g.info("blk.0.attn_q.weight.lora_a").type).toBe(GgmlType.F16);
    expect(g.info("blk.1.ffn_up.weight.lora_b").ne).toEqual([4, TINY.inter]);
    await g.close();
  });

  it("DoRA, modules_to_save and trained biases are refused with a LoraError saying why", async () => {
    const { lm } = await adapted({ r: 2, target_modules: ["q_proj"], use_dora: true }, 3);
    await expect(exportAdapterGguf(lm, join(tmp, "x.gguf"), { mapping })).rejects.toThrow(
      /DoRA.*merge it and export the full model/,
    );
    const { lm: lm2 } = await adapted({ r: 2, target_modules: ["q_proj"], modules_to_save: ["lm_head"] }, 3);
    await expect(exportAdapterGguf(lm2, join(tmp, "x.gguf"), { mapping })).rejects.toThrow(LoraError);
  });
});

type NodeLlamaCpp = typeof import("node-llama-cpp");
type Llama = Awaited<ReturnType<NodeLlamaCpp["getLlama"]>>;
let skipReason = "";
const lib: NodeLlamaCpp | undefined = await import("node-llama-cpp").catch((e) => {
  skipReason = `node-llama-cpp does not import: ${(e as Error).message}`;
  return undefined;
});
const llama: Llama | undefined = lib
  ? await lib.getLlama({ gpu: false, build: "never", logLevel: "error" as never }).catch((e) => {
      skipReason = `node-llama-cpp cannot load its prebuilt binary: ${(e as Error).message}`;
      return undefined;
    })
  : undefined;
afterAll(async () => {
  await llama?.dispose();
});

const TEXT = "Hello world, the quick brown fox jumps over the lazy dog!";

describe.skipIf(!llama)(
  `node-llama-cpp: base GGUF + adapter GGUF = our model with the adapter${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    let basePath = "";
    beforeAll(async () => {
      basePath = join(dir, "base.gguf");
      await exportGguf(dir, basePath, { outType: "F32" });
    });

    for (const [i, [name, config]] of CASES.entries())
      it(`${name}: next-token probabilities at every position within 1e-5 (F32), and the adapter changes them`, async () => {
        const tok = await loadTokenizer(dir);
        const ids = tok.encode(TEXT);
        const { model, lm } = await adapted(config, 10 + i);
        const ours = noGrad(() => probabilities(model as never, ids));
        const base = lm.withAdaptersDisabled(() => noGrad(() => probabilities(model as never, ids)));
        const adapterPath = join(tmp, `adapter-${i}.gguf`);
        await exportAdapterGguf(lm, adapterPath, { mapping });
        const theirs = await llamaProbabilities(basePath, adapterPath, ids);
        expect(maxAbsDiff(ours, theirs)).toBeLessThan(1e-5);
        expect(maxAbsDiff(ours, base)).toBeGreaterThan(1e-3); // the adapter matters
      });
  },
);

function probabilities(
  model: { forward(a: { inputIds: ReturnType<typeof tensor> }): { logits: ReturnType<typeof tensor> | null } },
  ids: number[],
): Float64Array[] {
  const input = tensor(Int32Array.from(ids), { dtype: "i32" }).reshape([1, ids.length]);
  const logits = model.forward({ inputIds: input }).logits!;
  const all = logits.toTypedArray() as Float32Array;
  input.dispose();
  logits.dispose();
  return ids.map((_, p) => softmax(all.subarray(p * vocab, (p + 1) * vocab)));
}

async function llamaProbabilities(base: string, adapter: string, ids: number[]): Promise<Float64Array[]> {
  const model = await llama!.loadModel({ modelPath: base });
  const context = await model.createContext({
    contextSize: 128,
    threads: 1,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    lora: { adapters: [{ filePath: adapter }] },
  } as never);
  try {
    const seq = context.getSequence();
    const out = await seq.controlledEvaluate(
      ids.map(
        (t) => [t, { generateNext: { probabilities: true } }] as [never, { generateNext: { probabilities: true } }],
      ),
    );
    return out.map((o) => {
      const p = new Float64Array(vocab);
      for (const [t, v] of o!.next.probabilities!) p[t as number] = v;
      return p;
    });
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

function maxAbsDiff(a: Float64Array[], b: Float64Array[]): number {
  let worst = 0;
  for (let p = 0; p < a.length; p++)
    for (let i = 0; i < a[p].length; i++) worst = Math.max(worst, Math.abs(a[p][i] - b[p][i]));
  return worst;
}
