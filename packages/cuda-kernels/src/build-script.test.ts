// The native build must not fail where nvcc is absent (CI machines without CUDA): one "skipped" line, exit 0.
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const script = join(dirname(fileURLToPath(import.meta.url)), "..", "scripts", "build-native.mjs");

describe("scripts/build-native.mjs", () => {
  it("prints one 'skipped: nvcc not found' line and exits 0 without nvcc", () => {
    const env = { ...process.env, CUDA_HOME: "", CUDA_PATH: "", QLORA_CUDA_DEFAULT_HOME: "", PATH: "/usr/bin:/bin" };
    const r = spawnSync(process.execPath, [script], { env, encoding: "utf8" });
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^cuda-kernels: skipped: nvcc not found \(looked in \$CUDA_HOME, \$CUDA_PATH, \/usr\/local\/cuda and PATH\)/,
    );
  });

  it("rejects a malformed QLORA_CUDA_ARCHS before compiling anything", () => {
    const r = spawnSync(process.execPath, [script], {
      env: { ...process.env, QLORA_CUDA_ARCHS: "80,hopper" },
      encoding: "utf8",
    });
    if (r.stdout.includes("skipped: nvcc not found")) return; // no toolkit on this machine: nothing to validate
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('QLORA_CUDA_ARCHS entry "hopper"');
  });
});
