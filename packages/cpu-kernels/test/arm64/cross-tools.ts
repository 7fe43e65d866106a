// The aarch64 cross-compiler and qemu that the arm64 tests on an x86-64 host need (.ci/run installs both).
import { existsSync } from "node:fs";
import { arch } from "node:os";
import { delimiter, join } from "node:path";

function onPath(names: string[]): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter))
    for (const name of names) if (dir && existsSync(join(dir, name))) return join(dir, name);
  return undefined;
}

export const aarch64Cxx = onPath(["aarch64-linux-gnu-g++"]);
export const qemuAarch64 = onPath(["qemu-aarch64-static", "qemu-aarch64"]);

/** Why an arm64 test cannot run here, or "" when it can; `onArm64` is the reason on an arm64 host. */
export function crossSkipReason(onArm64: string): string {
  if (arch() === "arm64") return onArm64;
  if (!aarch64Cxx) return "g++-aarch64-linux-gnu is not installed (apt-get install g++-aarch64-linux-gnu)";
  if (!qemuAarch64) return "qemu-user-static is not installed (apt-get install qemu-user-static)";
  return "";
}
