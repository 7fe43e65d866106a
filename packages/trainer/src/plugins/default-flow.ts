/**
 * The default schedule as a plugin (HF's DefaultFlowCallback): asks for a log every `loggingSteps`, an evaluation
 * every `evalSteps`, a checkpoint every `saveSteps`, and for all three at the last step when configured.
 */
import { TrainerError } from "../errors";
import type { TrainerPlugin } from "../plugin";
import type { Trainer } from "../trainer";

export function defaultFlow(): TrainerPlugin {
  return {
    name: "default-flow",
    order: "pre",
    hooks: {
      "step:end"(ctx) {
        const { args } = ctx.trainer as Trainer;
        const step = ctx.state.globalStep;
        const last = step >= ctx.state.maxSteps;
        const every = (n: number | undefined) => n !== undefined && (step % n === 0 || last);
        if (every(args.loggingSteps ?? 10) || step === 1) ctx.control.log();
        if (every(args.evalSteps)) ctx.control.evaluate();
        if (every(args.saveSteps)) ctx.control.save();
        if (last) ctx.control.stop("max_steps reached");
      },
      "fit:start"(ctx) {
        const t = ctx.trainer as Trainer;
        if (t.args.evalSteps && !t.options.eval)
          throw new TrainerError(
            "NO_EVAL_DATA",
            "TrainingArgs.evalSteps is set but the Trainer was given no eval data",
          );
        if (t.args.saveSteps && !t.args.outputDir)
          throw new TrainerError("NO_OUTPUT_DIR", "TrainingArgs.saveSteps is set but TrainingArgs.outputDir is not");
      },
    },
  };
}
