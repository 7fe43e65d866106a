// Entry of gpu-bundle/self-tests.mjs, the bundle's self-check on a machine without a GPU: tensor's
// backend parity suite on a second reference backend (the same body as packages/tensor's
// src/testing/parity.test.ts, seed 1), through the same shim and bundling as gpu-tests.mjs. Every test
// must pass; a failure or an empty run means the bundling or the shim is broken, not a kernel.
// It uses only @qlora/tensor (a dependency of this package): the cuda backend never imports its sibling
// @qlora/cpu-kernels (test/backend-isolation.test.ts).
import "./bundle-env";
import { createReferenceBackend } from "@qlora/tensor";
import { backendParitySuite } from "@qlora/tensor/testing";
import { runBundledTests } from "./run";

backendParitySuite(createReferenceBackend({ name: "reference-copy" }), { seeds: [1] });

await runBundledTests("self-tests", true);
