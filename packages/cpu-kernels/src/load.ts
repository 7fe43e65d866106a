import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CpuKernelsError } from "./errors";

/** The raw native module: N-API functions registered by csrc/*.cc (see csrc/registry.h). */
export type NativeModule = Record<string, (...args: never[]) => unknown>;

export class CpuKernelsLoadError extends CpuKernelsError {
  constructor(readonly reason: string) {
    super(
      "CPU_KERNELS_LOAD_FAILED",
      `@qlora/cpu-kernels: the native binary could not be loaded (${reason}). ` +
        "Build it with `pnpm --filter @qlora/cpu-kernels build:native` or set QLORA_CPU_KERNELS_PATH to a .node file.",
    );
    this.name = "CpuKernelsLoadError";
  }
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
  const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
  try {
    const explicit = process.env.QLORA_CPU_KERNELS_PATH;
    const native = explicit ? require(explicit) : require("node-gyp-build")(packageRoot);
    return { native: native as NativeModule };
  } catch (error) {
    return { error: new CpuKernelsLoadError(error instanceof Error ? error.message : String(error)) };
  }
}
