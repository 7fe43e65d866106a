// arm64 NEON kernels, verified on this x86-64 host: test/arm64/kernel_check.cc (GEMM micro-kernels +
// driver, 4-bit GEMM/GEMV, attention forward tile, each against an f64 scalar reference on odd shapes,
// and bit-identical at 1 and 3 threads) is cross-compiled with g++-aarch64-linux-gnu and run under
// qemu-user-static. Without those tools (apt-get install g++-aarch64-linux-gnu qemu-user-static, as
// .ci/run does) the test is reported skipped with the reason. On an arm64 host the native test files
// run the NEON paths directly and this one is skipped.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { aarch64Cxx, crossSkipReason, qemuAarch64 } from "./arm64/cross-tools";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const kernelSources = ["gemm_kernels", "gemm_bf16", "gemm_driver", "nf4_decode", "nf4_gemv", "pool", "attention_sse"];
const driver = join(root, "test", "arm64", "kernel_check.cc");

const skipReason = crossSkipReason("this host is arm64: the NEON paths run natively in the other test files");

/** Cross-compiles the driver once per source version (cached under node_modules/.cache/arm64-check/). */
function buildDriver(): string {
  const sources = [driver, ...kernelSources.map((f) => join(root, "csrc", `${f}.cc`))];
  const hash = createHash("sha1");
  // Every header in csrc/, not a list of them: a list missed rounded.h, and a stale binary would pass.
  const headers = readdirSync(join(root, "csrc"))
    .filter((f) => f.endsWith(".h"))
    .sort();
  for (const f of [...sources, ...headers.map((h) => join(root, "csrc", h))]) hash.update(readFileSync(f));
  const dir = join(root, "node_modules", ".cache", "arm64-check"); // outside build/, which node-gyp rebuild wipes
  const exe = join(dir, `kernel_check-${hash.digest("hex").slice(0, 12)}`);
  if (existsSync(exe)) return exe;
  mkdirSync(dir, { recursive: true });
  const tmp = `${exe}.${process.pid}.tmp`;
  const flags = ["-std=c++17", "-O2", "-march=armv8-a", "-static", "-pthread", `-I${join(root, "csrc")}`];
  const r = spawnSync(aarch64Cxx!, [...flags, ...sources, "-o", tmp], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`aarch64 cross-compile failed:\n${r.stderr}`);
  renameSync(tmp, exe); // atomic: a concurrent run never sees a half-written binary
  return exe;
}

describe("arm64 NEON kernels under qemu-aarch64", () => {
  it.skipIf(skipReason !== "")(
    `GEMM (neon 8x12 + scalar), NF4 GEMM/GEMV and the attention tile match the f64 reference${skipReason ? `: skipped, ${skipReason}` : ""}`,
    () => {
      const exe = buildDriver();
      const r = spawnSync(qemuAarch64!, [exe], { encoding: "utf8", timeout: 240_000 });
      const out = `${r.stdout}${r.stderr}`;
      expect(r.status, out).toBe(0);
      expect(out).toMatch(/^arch arm64$/m);
      expect(out).toMatch(/^kernel neon \(8x12\)$/m);
      expect(out).toMatch(/^ok {3}nf4 neon n299 k320 bs64 m1 gemv/m); // the NEON GEMV took the call
      expect(out).toMatch(/^ok {3}attention fwd/m);
      expect(out).toMatch(/^ok {3}attention fwd .* window37/m); // the sliding-window mask ran
      expect(out).not.toMatch(/^FAIL/m);
      expect(out.trim().split("\n").at(-1)).toBe("ALL PASS");
    },
    300_000,
  );
});
