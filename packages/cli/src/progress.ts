/** A progress bar (cli-progress) for long non-training work such as loading and quantizing a checkpoint. */
import { Presets, SingleBar } from "cli-progress";

export interface LayerProgress {
  onProgress: (done: number, total: number) => void;
  stop(): void;
}

/** Draws on stderr when it is a terminal and `quiet` is off; otherwise does nothing. */
export function layerProgress(
  label: string,
  quiet = false,
  stream: NodeJS.WriteStream = process.stderr,
  unit = "modules", // loadModel reports leaf modules (embedding, each linear and norm), not decoder layers
): LayerProgress {
  if (quiet || !stream.isTTY) return { onProgress: () => {}, stop: () => {} };
  let bar: SingleBar | undefined;
  return {
    onProgress(done, total) {
      if (!bar) {
        bar = new SingleBar(
          { format: `${label} [{bar}] {value}/{total} ${unit} | {eta_formatted}`, stream },
          Presets.shades_classic,
        );
        bar.start(total, 0);
      }
      bar.update(done);
    },
    stop: () => bar?.stop(),
  };
}

/**
 * Under `qlora train --nproc N` rank 0's stderr is mpirun's pipe. When the launcher's own stderr is a terminal it
 * passes its width on (QLORA_TTY_COLUMNS), and rank 0 writes through this stand-in that says it is a terminal, so
 * the progress bar is drawn: mpirun forwards the cursor escape codes to that terminal unchanged.
 */
export function launcherTerminal(
  env: NodeJS.ProcessEnv = process.env,
  stream: NodeJS.WriteStream = process.stderr,
): NodeJS.WriteStream | undefined {
  const columns = Number(env.QLORA_TTY_COLUMNS);
  if (stream.isTTY || !(Number.isInteger(columns) && columns > 0)) return undefined;
  const terminal = {
    isTTY: true,
    columns,
    write: (chunk: string | Uint8Array, ...rest: unknown[]) =>
      stream.write(chunk, ...(rest as [(error?: Error | null) => void])),
  };
  return terminal as unknown as NodeJS.WriteStream;
}
