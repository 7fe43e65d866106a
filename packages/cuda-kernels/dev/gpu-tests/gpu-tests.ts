// Entry of gpu-bundle/gpu-tests.mjs: the cuda-kernels test files, run by plain Node on the GPU machine
// (scripts/gpu-check.sh). Without a device the GPU suites report "skipped" with the runtime's reason
// and the no-device tests run instead.
import "./bundle-env";
import "../../src/no-device.test";
import "../../src/cuda.test";
import "../../src/attention-tc.test";
import "../../src/lora-accumulate.test";
import "../../src/nccl.test";
import "../../src/nccl-logic.test";
import "../../test/fixtures.test";
import { cudaDeviceStatus } from "../../src/index";
import { tryLoadNative } from "../../src/native";
import { runBundledTests } from "./run";

const status = cudaDeviceStatus();
if (status.available) {
  const d = status.device!;
  console.log(`device: ${d.name} (sm_${d.computeCapability.replace(".", "")}, ${d.smCount} SMs, driver ${d.driverVersion}, runtime ${d.runtimeVersion})`);
  console.log("cublas:", JSON.stringify(tryLoadNative().native!.cublasInfo()));
} else {
  console.log(`device: none (${status.reason}) — the GPU suites are skipped`);
}
await runBundledTests("gpu-tests", false);
