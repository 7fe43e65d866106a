import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CpuKernelsError } from "./errors";

/** The raw native module: N-API functions registered by csrc/*.cc (see csrc/registry.h). */
export type NativeModule = Record<string, (...args: never[]) => unknown>;

export class CpuKernelsLoadError extends CpuKernelsError {
  constructor(
    readonly reason: string,
    packageRoot = defaultPackageRoot(),
  ) {
    super(
      "CPU_KERNELS_LOAD_FAILED",
      `@qlora/cpu-kernels: the native binary could not be loaded (${reason}). ${buildHint(packageRoot)}`,
    );
    this.name = "CpuKernelsLoadError";
  }
}

function defaultPackageRoot(): string {
  return join(dirname(fileURLToPath(import.meta.url)), "..");
}

/** How to get a binary: the workspace build for a clone of the repository, a source build for an npm install. */
export function buildHint(packageRoot: string): string {
  const inWorkspace = existsSync(join(packageRoot, "..", "..", "pnpm-workspace.yaml"));
  const fallback = "or set QLORA_CPU_KERNELS_PATH to a .node file.";
  if (inWorkspace) return `Build it with \`pnpm --filter @qlora/cpu-kernels build:native\` ${fallback}`;
  return (
    `This package ships prebuilt binaries for some platforms only (this is ${process.platform}-${process.arch}); ` +
    `compile one with \`npx node-gyp rebuild\` in ${packageRoot} (needs python3, make and a C++17 compiler), ${fallback}`
  );
}

let cached: { native?: NativeModule; error?: CpuKernelsLoadError } | undefined;

/** Loads the addon once: $QLORA_CPU_KERNELS_PATH, else build/Release, else prebuilds/ (node-gyp-build). */
export function loadNative(): NativeModule {
  cached ??= tryLoad();
  if (cached.error) throw cached.error;
  return cached.native!;
}

function tryLoad(): { native?: NativeModule; error?: CpuKernelsLoadError } {
  const require = createRequire(import.meta.url);
  const packageRoot = defaultPackageRoot();
  try {
    const explicit = process.env.QLORA_CPU_KERNELS_PATH;
    const native = explicit ? require(explicit) : require("node-gyp-build")(packageRoot);
    return { native: native as NativeModule };
  } catch (error) {
    return { error: new CpuKernelsLoadError(error instanceof Error ? error.message : String(error)) };
  }
}
