/**
 * Progress: a cli-progress bar (step/total, loss, latest eval loss, lr, tokens/s, memory, ETA) when the stream is a terminal, plain
 * log lines otherwise (CI, files, pipes).
 */
import { SingleBar } from "cli-progress";
import { memoryStats } from "@qlora/tensor";
import type { TrainerPlugin } from "../plugin";

export interface ProgressOptions {
  readonly stream?: NodeJS.WriteStream | { isTTY?: boolean; write(s: string): unknown };
  /** Force the bar (true) or plain lines (false); default: the stream is a TTY. */
  readonly bar?: boolean;
}

function fmt(v: number | undefined, digits = 4): string {
  return v === undefined || Number.isNaN(v) ? "-" : Number(v.toPrecision(digits)).toString();
}

export function progress(o: ProgressOptions = {}): TrainerPlugin {
  const stream = o.stream ?? process.stderr;
  const useBar = o.bar ?? Boolean(stream.isTTY);
  let bar: SingleBar | undefined;
  let lastEvalStep: number | undefined;
  // Tensor bytes live now (between steps: weights, adapters, optimizer state) and the most held at once so far
  // (a step's activations on top): the runtime's accounting, not the process's RSS.
  const mem = () => {
    const { currentBytes, peakBytes } = memoryStats("cpu");
    return `${(currentBytes / 2 ** 20).toFixed(0)}MiB (peak ${(peakBytes / 2 ** 20).toFixed(0)}MiB)`;
  };
  return {
    name: "progress",
    order: "post",
    hooks: {
      "fit:start"(ctx) {
        // A run resumed at or past its max_steps has no step to show.
        if (!useBar || ctx.state.globalStep >= ctx.state.maxSteps) return;
        bar = new SingleBar({
          stream: stream as NodeJS.WriteStream,
          format:
            "{bar} {value}/{total} | loss {loss} | eval {eval} | lr {lr} | {tps} tok/s | mem {mem} | ETA {eta_formatted}",
          etaBuffer: 20,
        });
        bar.start(ctx.state.maxSteps, ctx.state.globalStep, { loss: "-", eval: "-", lr: "-", tps: "-", mem: mem() });
      },
      log(ctx) {
        const m = ctx.metrics;
        if (m.loss === undefined) return;
        if (bar) {
          bar.update(ctx.state.globalStep, {
            loss: fmt(m.loss),
            lr: fmt(m.lr, 3),
            tps: fmt(m.tokens_per_second, 3),
            mem: mem(),
          });
        } else {
          stream.write(
            `step ${ctx.state.globalStep}/${ctx.state.maxSteps} loss ${fmt(m.loss)} lr ${fmt(m.lr, 3)} grad_norm ${fmt(m.grad_norm, 3)} tokens/s ${fmt(m.tokens_per_second, 3)} (${fmt(m.loss_tokens_per_second, 3)} with loss) mem ${mem()}\n`,
          );
        }
      },
      "eval:end"(ctx) {
        // A second evaluation at the same step (the model has not changed since) is not printed twice.
        if (ctx.state.globalStep === lastEvalStep) return;
        lastEvalStep = ctx.state.globalStep;
        // the bar shows the latest eval loss and its step; plain output gets a line per evaluation
        if (bar) bar.update(ctx.state.globalStep, { eval: `${fmt(ctx.metrics?.eval_loss)} @${ctx.state.globalStep}` });
        else
          stream.write(
            `step ${ctx.state.globalStep} eval_loss ${fmt(ctx.metrics?.eval_loss)} perplexity ${fmt(ctx.metrics?.eval_perplexity)}\n`,
          );
      },
      "step:end"(ctx) {
        bar?.update(ctx.state.globalStep);
      },
      "fit:end"() {
        bar?.stop();
      },
      error() {
        bar?.stop();
      },
    },
  };
}
