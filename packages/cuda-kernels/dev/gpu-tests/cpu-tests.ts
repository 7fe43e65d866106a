// Entry of gpu-bundle/cpu-tests.mjs, the bundle's self-check on a machine without a GPU: the
// cpu-kernels fused-op parity file (tensor's backendParitySuite on the native cpu ops) through the
// same shim and bundling as gpu-tests.mjs. Its count must equal vitest's for that file.
import "./bundle-env";
import "../../../cpu-kernels/src/fused.test";
import { runBundledTests } from "./run";

await runBundledTests("cpu-tests", true);
