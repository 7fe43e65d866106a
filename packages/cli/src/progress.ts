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
  unit = "layers",
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
