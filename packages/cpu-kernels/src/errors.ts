/** The one error base class of @qlora/cpu-kernels: a machine-readable `code` plus a message that
 * names the offending argument and says what was expected. */
export class CpuKernelsError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "CpuKernelsError";
  }
}
