// Builds the native addon with the node-gyp pinned in devDependencies, against the local Node
// headers (never downloads them: pnpm does not pass nodedir through, see toolchain notes §2).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
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
const result = spawnSync(process.execPath, args, { cwd: packageRoot, stdio: "inherit" });
if (result.status !== 0) {
  console.error(`cpu-kernels: native build failed (node-gyp exited ${result.status}); see the log above`);
  process.exit(result.status ?? 1);
}
