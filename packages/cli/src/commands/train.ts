import { setThreads } from "@qlora/cpu-kernels";
import type { MpiCommunicator } from "@qlora/distributed";
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { latestCheckpoint } from "@qlora/trainer";
import { type TrainConfig, loadTrainConfig } from "../config";
import { CliError } from "../errors";
import { CommandExit, type GlobalOptions, type Io, positiveInt } from "../main";
import {
  launchRanks,
  loadDistributed,
  checkParallelConfig,
  rankRuntime,
  singleProcessRuntime,
  threadsPerRank,
  worldFromEnv,
} from "../ranks";
import { assertOutputDirFree } from "../output-lock";
import { type TrainResult, checkOutputDirRuns, checkTrainInputs, runTrain } from "../train";
import { onInterrupt, signalExitCode } from "./signals";

/** `--lora-r 16 --sample-packing true` → { "lora-r": "16", "sample-packing": "true" }. */
export function overridePairs(args: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--"))
      throw new CliError("BAD_ARGUMENT", `train: unexpected argument "${a}" (overrides are --key value)`);
    const eq = a.indexOf("=");
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (i + 1 < args.length && !args[i + 1].startsWith("--")) out[a.slice(2)] = args[++i];
    else out[a.slice(2)] = "true";
  }
  return out;
}

export function registerTrain(program: Command, io: Io): void {
  program
    .command("train")
    .description("fine-tune from a YAML config (Axolotl key names); any key can be overridden as --key value")
    .argument("<config>", "config.yaml")
    .option(
      "--nproc <n>",
      "train on n processes (ranks) under mpirun, each on its shard of the data: DDP, or FSDP when the config's fsdp keys ask for it",
      (v) => positiveInt(v, "--nproc"),
    )
    .allowUnknownOption()
    .allowExcessArguments()
    .action(async function (this: Command, file: string) {
      const global = this.optsWithGlobals() as GlobalOptions & { nproc?: number };
      const overrides = overridePairs(this.args.slice(1));
      const world = worldFromEnv();
      if (world.worldSize > 1) {
        if (global.nproc !== undefined && global.nproc !== world.worldSize)
          throw new CliError(
            "BAD_ARGUMENT",
            `--nproc ${global.nproc}: this process is one of ${world.worldSize} ranks mpirun started; drop --nproc or make it match`,
          );
        return trainRank(file, overrides, global, io, world);
      }
      // Validated here once, before any rank starts (a bad config is one error, not one per rank).
      const config = loadTrainConfig(file, overrides);
      if (global.nproc !== undefined && global.nproc > 1) {
        checkTrainInputs(config);
        const choice = checkParallelConfig(config, global.nproc);
        if (choice.name === "sharded-optimizer" && (await resumeStep(config)))
          throw new CliError(
            "CONFIG_INVALID",
            `${choice.key}: shard_grad_op cannot resume a checkpoint yet (it does not save its sharded optimizer state); resume with full_shard or DDP, or start fresh`,
          );
        // what one rank would refuse about output_dir is said once, before any rank starts
        assertOutputDirFree(config.output_dir);
        await checkOutputDirRuns(config, false, () => {});
        return launchRanks(global.nproc, process.argv.slice(2));
      }
      const interruption = onInterrupt((signal) =>
        io.err(
          // on a terminal the progress bar holds the current line: the message starts below it
          (process.stderr.isTTY && !global.quiet ? "\n" : "") +
            (signal === "SIGINT"
              ? "qlora: interrupted — writing a checkpoint at the end of this step (Ctrl-C again to quit at once)"
              : "qlora: interrupted (SIGTERM) — writing a checkpoint at the end of this step (a second signal quits at once)"),
        ),
      );
      try {
        const resumed = await resumeStep(config);
        sayNothingToTrain(io, config, resumed);
        const parallel = await singleProcessRuntime(config);
        const result = await runTrain(config, { quiet: global.quiet, signal: interruption.signal, parallel });
        printResult(io, global, result, resumed?.step);
        const signal = interruption.received();
        if (result.interrupted && signal) throw new CommandExit(signalExitCode(signal));
      } finally {
        interruption.dispose();
      }
    });
}

/** A resume at or past max_steps trains nothing: say so before the weights are written. */
function sayNothingToTrain(io: Io, config: TrainConfig, resumed: { dir: string; step: number } | undefined): void {
  if (resumed && config.max_steps !== undefined && resumed.step >= config.max_steps)
    io.err(
      `qlora: resume_from_checkpoint: ${resumed.dir} is at step ${resumed.step}, at or past max_steps ${config.max_steps}: nothing to train; saving its weights`,
    );
}

/** The step of the checkpoint a run resumes from (an explicit directory, or `true`: the latest in output_dir). */
async function resumeStep(config: TrainConfig): Promise<{ dir: string; step: number } | undefined> {
  const from = config.resume_from_checkpoint;
  const dir = typeof from === "string" ? from : from === true ? await latestCheckpoint(config.output_dir) : undefined;
  if (dir === undefined) return undefined;
  try {
    const state = JSON.parse(readFileSync(join(dir, "trainer_state.json"), "utf8")) as { globalStep?: unknown };
    return typeof state.globalStep === "number" ? { dir, step: state.globalStep } : undefined;
  } catch {
    return undefined; // the trainer names a missing or broken checkpoint itself
  }
}

function printResult(io: Io, global: GlobalOptions, result: TrainResult, resumedAt?: number): void {
  if (global.json) {
    io.out(JSON.stringify(resumedAt === undefined ? result : { ...result, resumedAt }));
    return;
  }
  const loss =
    result.evalLossBefore !== undefined && result.evalLossAfter !== undefined
      ? `; eval loss ${result.evalLossBefore.toFixed(4)} → ${result.evalLossAfter.toFixed(4)}`
      : "";
  const steps =
    resumedAt === undefined
      ? `trained ${result.globalStep} steps`
      : `trained ${Math.max(0, result.globalStep - resumedAt)} steps (resumed at step ${resumedAt}, now at ${result.globalStep})`;
  io.out(`${steps}${loss}`);
  if (result.stoppedEarly) io.out(`stopped before max_steps: ${result.stoppedEarly}`);
  if (result.bestCheckpoint) io.out(`loaded the best checkpoint: ${result.bestCheckpoint}`);
  io.out(`${result.interrupted ? "interrupted; " : ""}weights: ${result.modelDir}`);
  io.out(`report: ${result.reportPath}`);
}

/**
 * One rank of a job mpirun started (`--nproc N` or the user's own `mpirun -n N qlora train`). Rank 0 prints the
 * progress and the result; an error on any rank is printed with the rank and ends every rank (MPI_Abort), so no
 * peer waits for it. Ctrl-C goes to mpirun, which ends the job (resume from the last save_steps checkpoint).
 */
async function trainRank(
  file: string,
  overrides: Record<string, string>,
  global: GlobalOptions,
  io: Io,
  world: { rank: number; worldSize: number; local: number },
): Promise<void> {
  const dist = await loadDistributed(`rank ${world.rank} of ${world.worldSize}`);
  let comm: MpiCommunicator | undefined;
  await dist.runRank(
    async () => {
      const config = loadTrainConfig(file, overrides);
      if (global.threads === undefined && world.local > 1) setThreads(threadsPerRank(world.local));
      comm = dist.mpiWorld({ timeoutMs: config.ddp_timeout === undefined ? undefined : config.ddp_timeout * 1000 });
      const runtime = rankRuntime(dist, config, comm);
      const resumed = runtime.rank === 0 ? await resumeStep(config) : undefined;
      if (runtime.rank === 0) sayNothingToTrain(io, config, resumed);
      const result = await runTrain(config, { quiet: global.quiet, parallel: runtime });
      if (runtime.rank === 0) printResult(io, global, result, resumed?.step);
      await runtime.close();
    },
    {
      abort: (code) => (comm ? comm.abort(code) : process.exit(code)),
      rank: world.rank,
      worldSize: world.worldSize,
    },
  );
}
