/** Backend selection for the CLI's --device and --threads. */
import { registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { getBackend, setDefaultBackend } from "@qlora/tensor";
import { CliError } from "./errors";

/**
 * Register the native CPU backend and make it the default (`cpu`, and `auto`: the CUDA backend is opt-in until it has
 * run on a GPU). `cuda` goes through `selectCuda`.
 */
export function selectDevice(device: string | undefined, threads: number | undefined): string {
  if (device !== undefined && device !== "cpu" && device !== "auto")
    throw new CliError("BAD_ARGUMENT", `--device: expected cpu, cuda or auto, got "${device}"`);
  if (threads !== undefined) setThreads(threads);
  if (registerCpuBackend()) setDefaultBackend("cpu");
  return getBackend().name;
}

/**
 * `--device cuda`: load the optional @qlora/cuda-kernels package and make its backend the default. Refused with the
 * reason when the package is not installed or no device is usable. The CUDA backend builds but has not run on a GPU
 * yet, and several training ops fall back to composed forms there: the warning says so.
 */
export async function selectCuda(
  warn: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
): Promise<string> {
  let cuda: typeof import("@qlora/cuda-kernels");
  try {
    cuda = await import("@qlora/cuda-kernels");
  } catch (e) {
    throw new CliError(
      "UNSUPPORTED",
      `--device cuda: @qlora/cuda-kernels is not installed or did not load (${(e as Error).message.split("\n")[0]}); install it next to @qlora/cli`,
    );
  }
  const result = cuda.registerCudaBackend({ quiet: true });
  if (!result.registered) throw new CliError("UNSUPPORTED", `--device cuda: no usable CUDA device (${result.reason})`);
  setDefaultBackend("cuda");
  warn("qlora: --device cuda: the CUDA backend has not been verified on a GPU yet; results are not guaranteed");
  return getBackend().name;
}
