// Builds the shipped binary: `prebuildify --napi --strip` into prebuilds/<platform>-<arch>/, against the
// local Node headers (prebuildify --napi targets the newest Node it knows and would otherwise try to
// download that version's headers; N-API is ABI-stable, so building against ours is equivalent).
//   QLORA_PREBUILD_ARCH=arm64  on an x86-64 Linux host: cross-build prebuilds/linux-arm64/ with Debian's
//                              g++-aarch64-linux-gnu (binding.gyp's target_arch=='arm64' flags). Native
//                              arm64 Linux and Apple Silicon macOS runners need no variable (README "arm64").
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
const targetArch = process.env.QLORA_PREBUILD_ARCH || process.arch;
const cross = targetArch !== process.arch;
if (cross && !(process.platform === "linux" && targetArch === "arm64")) {
  console.error(`cpu-kernels prebuildify: cross-building ${process.platform}-${targetArch} is not supported here`);
  process.exit(1);
}
const crossEnv = cross
  ? {
      CC: "aarch64-linux-gnu-gcc",
      CXX: "aarch64-linux-gnu-g++",
      LINK: "aarch64-linux-gnu-g++",
      AR: "aarch64-linux-gnu-ar",
    }
  : {};
const result = spawnSync(
  process.execPath,
  [prebuildify, "--napi", "--strip", `--target=${process.versions.node}`, `--arch=${targetArch}`],
  {
    cwd: packageRoot,
    stdio: "inherit",
    env: {
      ...process.env,
      ...crossEnv,
      npm_config_nodedir: nodedir,
      TMPDIR: scratch,
      PREBUILD_NODE_GYP: require.resolve("node-gyp/bin/node-gyp.js"),
      // prebuildify --strip runs `strip`; the host's strip cannot read an aarch64 binary
      ...(cross ? { PREBUILD_STRIP_BIN: "aarch64-linux-gnu-strip" } : {}),
    },
  },
);
process.exit(result.status ?? 1);
