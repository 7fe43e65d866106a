// Builds the MPI binding with the pinned node-gyp against the local Node headers (never downloads them; pnpm does
// not pass nodedir through, toolchain notes §2). Needs no MPI: the addon dlopens libmpi.so.40 at run time.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const nodeGyp = require.resolve("node-gyp/bin/node-gyp.js");
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, "../..");
const result = spawnSync(process.execPath, [nodeGyp, "rebuild", `--nodedir=${nodedir}`], {
  cwd: packageRoot,
  stdio: "inherit",
});
process.exit(result.status ?? 1);
