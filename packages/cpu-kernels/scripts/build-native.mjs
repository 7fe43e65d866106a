// Builds the native addon with the node-gyp pinned in devDependencies, against the local Node
// headers (never downloads them: pnpm does not pass nodedir through, see toolchain notes §2).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
if (!existsSync(join(packageRoot, "binding.gyp"))) {
  console.log("cpu-kernels: no binding.gyp yet, nothing to build");
  process.exit(0);
}
const require = createRequire(import.meta.url);
const nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, "../..");
const args = [nodeGyp, "rebuild", `--nodedir=${nodedir}`, `--jobs=${process.env.JOBS ?? "max"}`];
// `node-gyp rebuild` wipes build/ first, so two builds of this package at once (two engineers'
// test runs, turbo + a manual build) corrupt each other. Serialise them with a lock directory in
// the temp dir (mkdir is atomic) holding the owner's pid; a lock whose owner is gone is stale.
const lock = join(
  tmpdir(),
  `qlora-cpu-kernels-build-${createHash("sha1").update(packageRoot).digest("hex").slice(0, 12)}.lock`,
);
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const ownerAlive = () => {
  try {
    process.kill(Number(readFileSync(join(lock, "pid"), "utf8")), 0);
    return true;
  } catch (error) {
    return error.code === "EPERM" || (error.code === "ENOENT" && Date.now() - statSync(lock).mtimeMs < 5000);
  }
};
for (let waited = 0; ; waited += 500) {
  try {
    mkdirSync(lock);
    writeFileSync(join(lock, "pid"), String(process.pid));
    break;
  } catch (error) {
    if (error.code !== "EEXIST") throw error;
    try {
      if (!ownerAlive()) rmSync(lock, { recursive: true, force: true });
    } catch {}
    if (waited === 0) console.log("cpu-kernels: another native build is running; waiting for it");
    sleep(500);
  }
}
let result;
try {
  result = spawnSync(process.execPath, args, { cwd: packageRoot, stdio: "inherit" });
} finally {
  rmSync(lock, { recursive: true, force: true });
}
if (result.status !== 0) {
  console.error(`cpu-kernels: native build failed (node-gyp exited ${result.status}); see the log above`);
  process.exit(result.status ?? 1);
}
