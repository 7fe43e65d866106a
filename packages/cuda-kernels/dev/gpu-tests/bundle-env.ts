// First import of every bundled test entry (scripts/gpu-bundle.mjs): points the addon loaders and the
// decoder fixture at the copies that travel next to the bundle (gpu-bundle/addons/, gpu-bundle/fixtures/),
// unless the caller already set the variables. Must run before any test file evaluates, because
// cuda.test.ts probes the device at import time.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const travelling: [string, string][] = [
  ["QLORA_CUDA_KERNELS_PATH", "addons/qlora_cuda.node"],
  ["QLORA_DECODER_FIXTURE", "fixtures/decoder_block.bin"],
];
for (const [name, file] of travelling) {
  const path = join(here, file);
  if (!process.env[name] && existsSync(path)) process.env[name] = path;
}
// Tests that start Node subprocesses through tsx (the multi-GPU NCCL ranks) skip themselves in the bundle.
process.env.QLORA_GPU_BUNDLE = "1";
