// The linux-arm64 addon in a real arm64 Node, on this x86-64 host. The addon is cross-built from csrc/ with
// g++-aarch64-linux-gnu (binding.gyp's arm64 flags, node-gyp --arch=arm64) into a prebuilds/linux-arm64/ directory.
// test/arm64/addon_smoke.cjs then runs in Debian's nodejs:arm64 under qemu-user-static: it loads the addon through
// node-gyp-build, as an npm install does, and checks N-API calls against f64 references. test/arm64-qemu.test.ts
// covers the NEON kernels themselves, without Node. Needs the two apt packages .ci/run installs and the arm64 Node
// that `bash scripts/arm64-node.sh` unpacks into .tools/arm64-root (or $QLORA_ARM64_ROOT); without them the test
// is reported skipped with the reason.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { crossSkipReason, qemuAarch64 } from "./arm64/cross-tools";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const arm64Root = process.env.QLORA_ARM64_ROOT ?? join(root, "..", "..", ".tools", "arm64-root");
const arm64Node = join(arm64Root, "usr", "bin", "node");

const skipReason =
  crossSkipReason("this host is arm64: the other test files load the native arm64 addon") ||
  (existsSync(arm64Node)
    ? ""
    : `no arm64 Node at ${arm64Node} (bash scripts/arm64-node.sh unpacks Debian's nodejs:arm64 there)`);

/** Cross-builds the addon once per source version into node_modules/.cache/arm64-addon/<hash>/prebuilds/. */
function buildArm64Addon(): string {
  const hash = createHash("sha1").update(readFileSync(join(root, "binding.gyp")));
  for (const f of readdirSync(join(root, "csrc")).sort()) hash.update(f).update(readFileSync(join(root, "csrc", f)));
  const cache = join(root, "node_modules", ".cache", "arm64-addon");
  const dir = join(cache, hash.digest("hex").slice(0, 12));
  if (existsSync(dir)) return dir;
  const tmp = `${dir}.${process.pid}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  cpSync(join(root, "binding.gyp"), join(tmp, "binding.gyp"));
  cpSync(join(root, "csrc"), join(tmp, "csrc"), { recursive: true });
  const r = spawnSync(
    process.execPath,
    [require.resolve("node-gyp/bin/node-gyp.js"), "rebuild", "--arch=arm64", "-j", "max"],
    {
      cwd: tmp,
      encoding: "utf8",
      env: {
        ...process.env,
        CC: "aarch64-linux-gnu-gcc",
        CXX: "aarch64-linux-gnu-g++",
        LINK: "aarch64-linux-gnu-g++",
        AR: "aarch64-linux-gnu-ar",
        // the local headers, never a download (toolchain notes)
        npm_config_nodedir: process.env.npm_config_nodedir || resolve(process.execPath, "../.."),
      },
    },
  );
  if (r.status !== 0) throw new Error(`node-gyp --arch=arm64 failed:\n${r.stdout}\n${r.stderr}`);
  mkdirSync(join(tmp, "prebuilds", "linux-arm64"), { recursive: true });
  renameSync(
    join(tmp, "build", "Release", "qlora_cpu.node"),
    join(tmp, "prebuilds", "linux-arm64", "@qlora+cpu-kernels.node"),
  );
  rmSync(join(tmp, "build"), { recursive: true }); // node-gyp-build must find the prebuild, not build/Release
  renameSync(tmp, dir); // whole or absent: a concurrent run never sees a half-built directory
  return dir;
}

describe("the linux-arm64 addon in Debian's arm64 Node under qemu-aarch64", () => {
  it.skipIf(skipReason !== "")(
    `loads through node-gyp-build; GEMM, 4-bit GEMV/GEMM and AdamW match f64 references${skipReason ? `: skipped, ${skipReason}` : ""}`,
    () => {
      const dir = buildArm64Addon();
      const smoke = join(root, "test", "arm64", "addon_smoke.cjs");
      const r = spawnSync(qemuAarch64!, ["-L", arm64Root, arm64Node, smoke, dir, require.resolve("node-gyp-build")], {
        encoding: "utf8",
        timeout: 120_000,
      });
      expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
      const got = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      expect([got.arch, got.gemmIsa, got.gemvIsa]).toEqual(["arm64", "neon", "neon"]);
      // Errors in units of each output's rounding bound (see addon_smoke.cjs): at most 1.
      for (const worst of [...got.gemm, got.nf4Gemv, got.nf4Gemm, got.adamw]) expect(worst).toBeLessThanOrEqual(1);
      expect(got.threadsBitIdentical).toBe(true);
    },
    300_000,
  );
});
