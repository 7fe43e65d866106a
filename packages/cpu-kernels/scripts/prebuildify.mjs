// Builds the shipped binary: `prebuildify --napi --strip` into prebuilds/<platform>-<arch>/, against the
// local Node headers (prebuildify --napi targets the newest Node it knows and would otherwise try to
// download that version's headers; N-API is ABI-stable, so building against ours is equivalent).
import { spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const nodedir = process.env.npm_config_nodedir || resolve(process.execPath, "../..");
const scratch = join(packageRoot, "build", "prebuildify-tmp"); // keeps prebuildify's devdir out of the shared /tmp
mkdirSync(scratch, { recursive: true });
const prebuildify = join(dirname(require.resolve("prebuildify/package.json")), "bin.js");
const result = spawnSync(process.execPath, [prebuildify, "--napi", "--strip", `--target=${process.versions.node}`], {
  cwd: packageRoot,
  stdio: "inherit",
  env: {
    ...process.env,
    npm_config_nodedir: nodedir,
    TMPDIR: scratch,
    PREBUILD_NODE_GYP: require.resolve("node-gyp/bin/node-gyp.js"),
  },
});
process.exit(result.status ?? 1);
