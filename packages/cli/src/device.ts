/** Backend selection for the CLI's --device and --threads. */
import { registerCpuBackend, setThreads } from "@qlora/cpu-kernels";
import { getBackend, setDefaultBackend } from "@qlora/tensor";
import { CliError } from "./errors";

/**
 * Register the native CPU backend and make it the default. `cuda` is refused for now: the CUDA backend builds but
 * has not run on a GPU, and the training ops (LoRA, chunked cross-entropy, 8-bit optimizers) have no CUDA kernels.
 */
export function selectDevice(device: string | undefined, threads: number | undefined): string {
  if (device === "cuda")
    throw new CliError("UNSUPPORTED", "--device cuda: the CLI runs on the CPU backend only for now (use cpu or auto)");
  if (device !== undefined && device !== "cpu" && device !== "auto")
    throw new CliError("BAD_ARGUMENT", `--device: expected cpu, cuda or auto, got "${device}"`);
  if (threads !== undefined) setThreads(threads);
  if (registerCpuBackend()) setDefaultBackend("cpu");
  return getBackend().name;
}
