import { createModel, parseConfig, randomLayers } from "@qlora/models";
import { LoraModel } from "@qlora/lora";
import { AdamW } from "@qlora/paged-optim";
import { memoryStats, resetPeakMemory } from "@qlora/tensor";
import { selectDevice } from "../src/device";
import { batchLoss } from "../src/loss";
selectDevice("cpu", undefined);
memoryStats("cpu");
let peakStack = "";
const series: [number, number, string][] = [];
let prev = 0;
let peakVal = 0;
const origGet = Map.prototype.get;
Map.prototype.get = function (k: unknown) {
  const v = origGet.call(this, k);
  if (k === "cpu" && v && typeof v === "object" && "peak" in v && !(v as any).__p) {
    let cur = (v as any).current;
    (v as any).__p = true;
    Object.defineProperty(v, "current", {
      get: () => cur,
      set: (x: number) => {
        cur = x;
        if ((globalThis as any).__rec) {
          const st = new Error()
            .stack!.split("\n")
            .slice(4, 9)
            .map((l) => (l.match(/at (\S+) \(.*\/(\w+[-\w]*\.ts):(\d+)/) || []).slice(1).join("@"))
            .join(" < ");
          series.push([x - prev, x, st]);
        }
        prev = x;
        if (x > peakVal && (globalThis as any).__rec) {
          peakVal = x;
          peakStack = new Error().stack!;
        }
      },
    });
  }
  return v;
};
const s = JSON.parse(process.argv[2]);
const raw = { architectures: ["LlamaForCausalLM"], ...s, max_position_embeddings: 1024, torch_dtype: "float32" };
const M = (x: number) => (x / 1e6).toFixed(3);
const model = createModel(
  parseConfig(raw),
  randomLayers({ seed: 1, dtype: "f32", quantize: { quantType: "nf4", doubleQuant: true, blocksize: 64 } }),
  { gradientCheckpointing: s.ckpt } as never,
);
console.log("after model", M(memoryStats("cpu").currentBytes));
LoraModel.inject(model, { r: 8, lora_alpha: 16, target_modules: "all-linear" });
console.log("after lora", M(memoryStats("cpu").currentBytes));
const params = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
const opt = new AdamW(params, { lr: 1e-3 });
const T = s.seq * s.mb;
const ids = new Int32Array(T).map((_, i) => (i * 13) % s.vocab_size);
const pos = new Int32Array(T).map((_, i) => i % s.seq);
for (let step = 0; step < 3; step++) {
  if (step === 2) {
    resetPeakMemory("cpu");
    peakVal = memoryStats("cpu").currentBytes;
    (globalThis as any).__rec = true;
  }
  console.log("step", step, "start", M(memoryStats("cpu").currentBytes));
  const b = {
    rows: s.mb,
    seqLen: s.seq,
    inputIds: ids,
    labels: ids,
    positionIds: pos,
    segmentIds: new Int32Array(T),
    numLossTokens: T - s.mb,
  };
  const l = batchLoss(model, b as never);
  console.log(" after fwd", M(memoryStats("cpu").currentBytes));
  l.backward();
  l.dispose();
  console.log(" after bwd", M(memoryStats("cpu").currentBytes));
  await opt.step();
  console.log(" after opt", M(memoryStats("cpu").currentBytes));
  opt.zeroGrad();
  console.log(" after zero", M(memoryStats("cpu").currentBytes), "peak", M(memoryStats("cpu").peakBytes));
}
for (const [d, x, st] of series) console.log((d / 1e3).toFixed(1).padStart(9), (x / 1e6).toFixed(3).padStart(8), st);
console.log(peakStack.split("\n").slice(0, 25).join("\n"));
