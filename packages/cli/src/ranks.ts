/**
 * Several processes for `qlora train`: the launcher side (`--nproc N` re-runs this same command under `mpirun -n N`
 * through @qlora/distributed's launch()) and the rank side (a process started by mpirun, the CLI's own or the
 * user's, finds its rank in the environment, trains its shard of the data with the strategy the config asks for,
 * and on an error names its rank and ends the whole job so no peer waits for it).
 *
 * @qlora/distributed is an optional peer (it carries the MPI binding): loaded only when more than one rank is asked
 * for, with an error that says how to install it otherwise.
 */
import { availableParallelism } from "node:os";
import type * as Distributed from "@qlora/distributed";
import type { LoraModel } from "@qlora/lora";
import { type CheckpointIO, type Strategy, TrainerError, strategyByName } from "@qlora/trainer";
import type { TrainConfig } from "./config";
import { CliError } from "./errors";
import { chooseStrategy } from "./parallel-config";

type DistributedModule = typeof Distributed;

/** Rank and world size from the environment mpirun (Open MPI or a PMI launcher) gives its processes. */
export function worldFromEnv(env: NodeJS.ProcessEnv = process.env): { rank: number; worldSize: number; local: number } {
  const num = (...keys: string[]) => {
    const v = keys.map((k) => env[k]).find((x) => x !== undefined);
    return v === undefined ? undefined : Number(v);
  };
  const rank = num("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK") ?? 0;
  const worldSize = num("OMPI_COMM_WORLD_SIZE", "PMI_SIZE") ?? 1;
  const local = num("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS") ?? worldSize;
  return { rank, worldSize, local };
}

export async function loadDistributed(what: string): Promise<DistributedModule> {
  try {
    return await import("@qlora/distributed");
  } catch (e) {
    // Only "not registered" is the package's answer; a strategy that fails to build says why itself.
    if (!(e instanceof TrainerError && /is not registered/.test(e.message))) throw e;
    throw new CliError(
      "UNSUPPORTED",
      `${what}: needs @qlora/distributed (multi-process training), which is not installed or did not load (${(e as Error).message.split("\n")[0]}); install it next to @qlora/cli, with Open MPI (apt-get install openmpi-bin)`,
    );
  }
}

/** `--nproc 2` / `--nproc=2` removed from a command line (the ranks must not launch again). */
export function withoutNproc(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--nproc") i++;
    else if (!argv[i].startsWith("--nproc=")) out.push(argv[i]);
  }
  return out;
}

/**
 * `qlora train config.yaml --nproc N`: runs `mpirun -n N <node> <node flags> <this script> <the same arguments
 * without --nproc>` (process.argv: this process's own script and command line) and waits for it. Every rank's
 * output reaches this terminal through mpirun; a TTY here is passed on (QLORA_TTY_COLUMNS) so rank 0 can still draw
 * its progress bar through mpirun's pipe. Ctrl-C reaches mpirun, which ends the ranks; this process waits for it.
 */
export async function launchRanks(nproc: number, argv: readonly string[]): Promise<void> {
  const dist = await loadDistributed(`--nproc ${nproc}`);
  const found = dist.findMpirun();
  if (!found.ok) throw new CliError("UNSUPPORTED", `--nproc ${nproc}: ${found.reason}`);
  const script = process.argv[1];
  if (!script) throw new CliError("UNSUPPORTED", `--nproc ${nproc}: cannot tell which script runs qlora (no argv[1])`);
  const env: Record<string, string> = {
    // Containers usually forbid the cross-memory-attach copy that Open MPI's shared-memory transport tries first
    // (the job then fails at the first large message); the copy-in/copy-out path works everywhere.
    OMPI_MCA_btl_vader_single_copy_mechanism: process.env.OMPI_MCA_btl_vader_single_copy_mechanism ?? "none",
  };
  if (process.stderr.isTTY) env.QLORA_TTY_COLUMNS = String(process.stderr.columns || 80);
  let interrupted: "SIGINT" | "SIGTERM" | undefined;
  // launch() passes SIGINT and SIGTERM on to mpirun, which stops the ranks; this process waits for it (a launcher
  // that exited at once left the job training in the background).
  const onSigint = () => {
    interrupted = "SIGINT";
  };
  const onSigterm = () => {
    interrupted = "SIGTERM";
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigterm);
  try {
    const r = await dist.launch({
      nproc,
      argv: [...process.execArgv, script, ...withoutNproc(argv)],
      env,
      // a SIGINT sent to this process alone (kill -INT, timeout -s INT) must reach mpirun too; a terminal's Ctrl-C
      // reaches it twice, which ends the job the same way
      forwardSignals: ["SIGTERM", "SIGINT"],
    });
    if (r.exitCode !== 0 && interrupted)
      throw new CliError(
        "JOB_FAILED",
        `train --nproc ${nproc}: interrupted (${interrupted === "SIGINT" ? "Ctrl-C" : "SIGTERM"}): mpirun stopped the ranks, which write no checkpoint when stopped; resume from the last save_steps checkpoint, if one was written, with resume_from_checkpoint: true`,
        interrupted === "SIGINT" ? 130 : 143,
      );
    if (r.exitCode !== 0)
      throw new CliError(
        "JOB_FAILED",
        `train --nproc ${nproc}: the job failed (mpirun ${r.signal ? `ended by ${r.signal}` : `exited ${r.exitCode}`}); the failing rank's error, or mpirun's report of a rank that died, is above`,
        1,
      );
  } finally {
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigterm);
  }
}

/**
 * The strategy `worldSize` ranks will run, after the config checks that need only the world size: `--nproc` runs them
 * before it starts any rank, so a config error is one line (exit 2), not one per rank after the ranks have started.
 */
export function checkParallelConfig(config: TrainConfig, worldSize: number): ReturnType<typeof chooseStrategy> {
  const choice = chooseStrategy(config, worldSize);
  if (choice.name === "ddp" && config.ddp === false)
    throw new CliError(
      "CONFIG_INVALID",
      `ddp: false, but ${worldSize} ranks run: without DDP or FSDP (fsdp: [full_shard]) they would not share the work; run one process or drop the key`,
    );
  if (choice.name === "fsdp" && !config.adapter)
    throw new CliError(
      "CONFIG_INVALID",
      `${choice.key}: FSDP shards the frozen base of an adapter run; set adapter: qlora or lora (a full fine-tune trains with DDP: drop the key)`,
    );
  const saves =
    config.save_steps !== undefined
      ? "save_steps"
      : config.saves_per_epoch !== undefined
        ? "saves_per_epoch"
        : undefined;
  if (choice.name === "sharded-optimizer" && saves)
    throw new CliError(
      "CONFIG_INVALID",
      `${choice.key}: shard_grad_op cannot checkpoint its sharded optimizer state yet; drop ${saves} or use full_shard`,
    );
  return choice;
}

export interface RankRuntime {
  readonly rank: number;
  readonly worldSize: number;
  readonly strategy: Strategy;
  /** The strategy's own checkpoint format for adapter runs (FSDP: one PEFT adapter plus per-rank optimizer shards). */
  readonly checkpointIO?: (lora: LoraModel, baseModel: string) => CheckpointIO;
  /** MPI_Finalize (after the last collective). */
  close(): Promise<void>;
}

/**
 * This rank's strategy, resolved by name through the trainer's registry: "ddp" by default, "fsdp" or
 * "sharded-optimizer" when the config's FSDP keys ask for them. A strategy @qlora/distributed does not provide
 * is an error naming the key.
 */
export function rankRuntime(dist: DistributedModule, config: TrainConfig, comm: Distributed.Communicator): RankRuntime {
  const choice = checkParallelConfig(config, comm.worldSize);
  if (choice.name === "ddp")
    dist.registerDdpStrategy({
      communicator: comm,
      gradientAccumulationSteps: config.gradient_accumulation_steps,
      bucketCapBytes: config.ddp_bucket_cap_mb === undefined ? undefined : config.ddp_bucket_cap_mb * 2 ** 20,
    });
  else if (choice.name === "sharded-optimizer") dist.registerShardedOptimizerStrategy({ communicator: comm });
  else registerFsdp(dist, comm);
  let strategy: Strategy;
  try {
    strategy = strategyByName(choice.name);
  } catch (e) {
    // Only "not registered" is the package's answer; a strategy that fails to build says why itself.
    if (!(e instanceof TrainerError && /is not registered/.test(e.message))) throw e;
    throw new CliError(
      "CONFIG_INVALID",
      `${choice.key}: asks for the "${choice.name}" strategy, which this @qlora/distributed does not provide (${(e as Error).message}); use fsdp: [shard_grad_op] or drop the key for DDP`,
    );
  }
  const checkpointIO =
    typeof dist.FsdpStrategy === "function" && strategy instanceof dist.FsdpStrategy
      ? (lora: LoraModel, baseModel: string) =>
          dist.fsdpCheckpointIO({
            strategy: strategy as Distributed.FsdpStrategy,
            lora,
            baseModelNameOrPath: baseModel,
          })
      : undefined;
  return { rank: comm.rank, worldSize: comm.worldSize, strategy, checkpointIO, close: () => comm.close() };
}

/**
 * Registers "fsdp" when this @qlora/distributed has an FSDP strategy (an optional peer may be older than the CLI:
 * looked up, not assumed; without it strategyByName reports the key).
 */
function registerFsdp(dist: DistributedModule, comm: Distributed.Communicator): void {
  const register = (dist as unknown as Record<string, unknown>).registerFsdpStrategy;
  if (typeof register === "function") register({ communicator: comm });
}

/**
 * One process whose config asks for FSDP (full_shard): the fsdp strategy over a world of one, so a checkpoint
 * written by N ranks resumes here and one written here resumes on N ranks. Undefined: train without a strategy.
 */
export async function singleProcessRuntime(config: TrainConfig): Promise<RankRuntime | undefined> {
  if (chooseStrategy(config, 1).name !== "fsdp") return undefined;
  const dist = await loadDistributed(fsdpKey(config));
  return rankRuntime(dist, config, new dist.LocalCommunicator());
}

function fsdpKey(config: TrainConfig): string {
  return config.fsdp !== undefined ? "fsdp" : "fsdp_config";
}

/** Threads per rank when --threads is not given: the cores shared out between the ranks on this machine. */
export function threadsPerRank(localRanks: number): number {
  return Math.max(1, Math.floor(availableParallelism() / Math.max(1, localRanks)));
}
