/**
 * One decoder layer (hidden 2048, 16 heads / 4 kv heads, ffn 5632, batch 2 × seq 512) forward + backward
 * (dX only: NF4+DQ frozen weights) on the native `cpu` backend. Prints one JSON line: median seconds per
 * iteration, tokens/s, peak RSS growth from before the layer was built, the tensor allocator's peak.
 *   node --import tsx --conditions=@qlora/source bench/layer-ours.ts [iters]
 */
import { getThreads, registerCpuBackend } from "@qlora/cpu-kernels";
import { memoryStats, ones, randn, resetPeakMemory, tensor } from "@qlora/tensor";
import { DecoderLayer, parseConfig, RotaryEmbedding, randomLayers } from "../src";

const iters = Number(process.argv[2] ?? 3);
if (!registerCpuBackend()) throw new Error("the native cpu backend did not load");
const rss0 = process.resourceUsage().maxRSS * 1024;
const B = 2;
const S = 512;
const config = parseConfig({
  architectures: ["LlamaForCausalLM"],
  hidden_size: 2048,
  num_attention_heads: 16,
  num_key_value_heads: 4,
  intermediate_size: 5632,
  num_hidden_layers: 1,
  vocab_size: 32000,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
});
const layer = new DecoderLayer(
  config,
  new RotaryEmbedding(config),
  "model.layers.0",
  randomLayers({ seed: 1, quantize: { doubleQuant: true } }),
);
const pos = new Int32Array(B * S).map((_, i) => i % S);
const positions = tensor(pos, { shape: [B, S], dtype: "i32" });
const x = randn([B, S, 2048], { requiresGrad: true });
const grad = ones([B, S, 2048]);
const times: number[] = [];
resetPeakMemory("cpu");
for (let i = 0; i < iters + 1; i++) {
  const t0 = performance.now();
  const out = layer.forward(x, { positions });
  out.backward(grad);
  out.dispose();
  const dt = (performance.now() - t0) / 1000;
  if (!x.grad || !Number.isFinite(x.grad.sum().item())) throw new Error("no finite dX");
  x.grad.dispose();
  x.grad = null;
  if (i > 0) times.push(dt); // the first iteration warms up
}
times.sort((a, b) => a - b);
const median = times[Math.floor(times.length / 2)];
console.log(
  JSON.stringify({
    who: "ours",
    threads: getThreads(),
    median_s: median,
    tokens_per_s: (B * S) / median,
    peak_rss_growth_bytes: process.resourceUsage().maxRSS * 1024 - rss0,
    allocator_peak_bytes: memoryStats("cpu").peakBytes,
  }),
);
