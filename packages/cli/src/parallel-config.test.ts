import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as distributed from "@qlora/distributed";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { runCli } from "../test/helpers";
import { parseTrainConfig } from "./config";
import { CliError } from "./errors";
import { singleProcessParts } from "./estimate";
import { launcherTerminal } from "./progress";
import { chooseStrategy, fsdpOptions, wantsActivationCheckpointing } from "./parallel-config";
import { checkParallelConfig, rankRuntime, withoutNproc, worldFromEnv } from "./ranks";

const BASE = "base_model: m\ndatasets: [{path: d.jsonl}]\n";
const parse = (extra: string) => parseTrainConfig(BASE + extra, "c.yaml");

describe("strategy from the config (Axolotl keys)", () => {
  it("one process trains alone (FSDP over a world of one under full_shard); several use DDP by default", () => {
    expect(chooseStrategy(parse(""), 1).name).toBe("single");
    expect(chooseStrategy(parse("ddp: true\n"), 1).name).toBe("single");
    expect(chooseStrategy(parse("fsdp: [shard_grad_op]\n"), 1).name).toBe("single");
    // the same checkpoint format at every world size: an N-rank FSDP checkpoint resumes in one process
    expect(chooseStrategy(parse("fsdp: [full_shard]\n"), 1).name).toBe("fsdp");
    expect(chooseStrategy(parse(""), 2).name).toBe("ddp");
    expect(chooseStrategy(parse("ddp: true\n"), 3).name).toBe("ddp");
  });

  it("fsdp / fsdp_config choose the fsdp (full_shard) or sharded-optimizer (shard_grad_op) strategy", () => {
    expect(chooseStrategy(parse("fsdp: [full_shard, auto_wrap]\n"), 2)).toEqual({ name: "fsdp", key: "fsdp" });
    expect(chooseStrategy(parse("fsdp: full_shard auto_wrap\n"), 2).name).toBe("fsdp");
    expect(chooseStrategy(parse("fsdp: [auto_wrap]\n"), 2).name).toBe("fsdp"); // FSDP's default sharding
    expect(chooseStrategy(parse("fsdp: [shard_grad_op]\n"), 2).name).toBe("sharded-optimizer");
    const c = parse(
      "fsdp_config:\n  fsdp_sharding_strategy: SHARD_GRAD_OP\n  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n",
    );
    expect(chooseStrategy(c, 2)).toEqual({ name: "sharded-optimizer", key: "fsdp_config" });
    expect(chooseStrategy(parse("fsdp_config: {sharding_strategy: FULL_SHARD}\n"), 2).name).toBe("fsdp");
    expect(fsdpOptions(" Full_Shard  auto_wrap ")).toEqual(["full_shard", "auto_wrap"]);
    expect(wantsActivationCheckpointing(parse("fsdp_config: {fsdp_activation_checkpointing: true}\n"))).toBe(true);
  });

  it("keys that cannot be honoured are errors naming the file, line and key", () => {
    const bad = (extra: string) => () => parse(extra);
    expect(bad("fsdp: [full_shard, offload]\n")).toThrow(
      /c\.yaml:3: fsdp\[1\]: FSDP option "offload" is not supported/,
    );
    expect(bad("fsdp: [fully_shard]\n")).toThrow(/fsdp\[0\]: unknown FSDP option "fully_shard"/);
    expect(bad("fsdp: [full_shard, shard_grad_op]\n")).toThrow(/keep one/);
    expect(bad("fsdp_config:\n  fsdp_offload_params: true\n")).toThrow(
      /c\.yaml:4: fsdp_config\.fsdp_offload_params: expected one of false \(CPU offload is not supported\), got true$/m,
    );
    expect(bad("fsdp_config: {fsdp_sharding_strategy: HYBRID_SHARD}\n")).toThrow(
      /fsdp_config\.fsdp_sharding_strategy: expected one of "FULL_SHARD", "SHARD_GRAD_OP"/,
    );
    expect(bad("fsdp_config: {fsdp_bogus: 1}\n")).toThrow(/fsdp_config\.fsdp_bogus: unknown fsdp_config key/);
    // a key named like an Object.prototype member (found by the fuzz test: a TypeError, not a CliError)
    expect(bad("fsdp_config: {toString: FULL_SHARD}\n")).toThrow(/fsdp_config\.toString: unknown fsdp_config key/);
    expect(bad("fsdp: [full_shard]\nfsdp_config: {sharding_strategy: SHARD_GRAD_OP}\n")).toThrow(
      /fsdp_config\.sharding_strategy: says SHARD_GRAD_OP but fsdp says full_shard/,
    );
    expect(bad("ddp: true\nfsdp: [full_shard]\n")).toThrow(/ddp: ddp: true and fsdp\/fsdp_config ask for two/);
    expect(bad("ddp_timeout: 0\n")).toThrow(/ddp_timeout/);
  });
});

describe("fuzz: the multi-process keys", () => {
  it("any fsdp / fsdp_config / ddp values either parse (and choose a strategy) or throw a CliError", () => {
    const option = fc.oneof(
      fc.constantFrom("full_shard", "shard_grad_op", "auto_wrap", "offload", "hybrid_shard", "FULL_SHARD", ""),
      fc.string(),
    );
    const scalar = fc.oneof(fc.string(), fc.boolean(), fc.integer(), fc.constant(null));
    const configKey = fc.oneof(
      fc.constantFrom("fsdp_sharding_strategy", "sharding_strategy", "fsdp_offload_params", "activation_checkpointing"),
      fc.string(),
    );
    const value = fc.oneof(fc.constantFrom("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", true, false), scalar);
    const keys = fc.record(
      {
        fsdp: fc.oneof(fc.array(option, { maxLength: 4 }), option, scalar),
        fsdp_config: fc.oneof(fc.dictionary(configKey, value, { maxKeys: 4 }), scalar),
        ddp: scalar,
        fsdp_version: scalar,
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(keys, fc.integer({ min: 1, max: 8 }), (extra, worldSize) => {
        const text = JSON.stringify({ base_model: "m", datasets: [{ path: "d" }], adapter: "lora", ...extra });
        try {
          const config = parseTrainConfig(text, "c.yaml");
          expect(["single", "ddp", "fsdp", "sharded-optimizer"]).toContain(chooseStrategy(config, worldSize).name);
        } catch (e) {
          expect(e).toBeInstanceOf(CliError);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe("rank runtime (a world of two stands in for MPI_COMM_WORLD)", () => {
  // rankRuntime reads rank and worldSize and keeps the communicator for the strategy (not used here)
  const world2 = () => ({ rank: 0, worldSize: 2, close: async () => {} }) as never;

  it("ddp: false with several ranks, or an fsdp strategy the package does not provide, is an error naming the key", () => {
    expect(() => rankRuntime(distributed, parse("ddp: false\n"), world2())).toThrow(/ddp: false, but 2 ranks run/);
    // A @qlora/distributed without an FSDP strategy. vitest isolates each test file, and this test runs before
    // the next one registers "fsdp": the trainer's registry has no "fsdp" yet.
    const noFsdp = { ...distributed, registerFsdpStrategy: undefined } as unknown as typeof distributed;
    expect(() => rankRuntime(noFsdp, parse("adapter: lora\nfsdp: [full_shard]\n"), world2())).toThrow(
      /fsdp: asks for the "fsdp" strategy, which this @qlora\/distributed does not provide/,
    );
    expect(() => rankRuntime(distributed, parse("fsdp: [full_shard]\n"), world2())).toThrow(
      /fsdp: FSDP shards the frozen base of an adapter run; set adapter: qlora or lora/,
    );
    expect(() => rankRuntime(distributed, parse("fsdp: [shard_grad_op]\nsave_steps: 5\n"), world2())).toThrow(
      /fsdp: shard_grad_op cannot checkpoint its sharded optimizer state yet; drop save_steps/,
    );
    expect(() => checkParallelConfig(parse("fsdp: [shard_grad_op]\nsaves_per_epoch: 2\n"), 2)).toThrow(
      /drop saves_per_epoch or use full_shard/,
    );
  });

  it("--nproc refuses an output_dir in use or holding an earlier run's checkpoints before it starts a rank", async () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-nproc-out-"));
    writeFileSync(join(dir, "d.jsonl"), '{"text": "a b c"}\n');
    const demoBase = fileURLToPath(new URL("../demo/base", import.meta.url));
    const out = join(dir, "out");
    const file = join(dir, "c.yaml");
    writeFileSync(file, `base_model: ${demoBase}\ndatasets: [{path: ${join(dir, "d.jsonl")}}]\noutput_dir: ${out}\n`);
    mkdirSync(join(out, "checkpoint-5"), { recursive: true });
    writeFileSync(join(out, "checkpoint-5", "trainer_state.json"), "{}");
    const old = await runCli(["train", file, "--nproc", "2"]);
    expect(old.code).toBe(2);
    expect(old.err).toMatch(/^qlora: output_dir: .* already holds checkpoint-5 from an earlier run/);
    // a live run's lock (this test runner's parent stands in for it)
    const stat = readFileSync(`/proc/${process.ppid}/stat`, "utf8");
    const procStart = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
    writeFileSync(
      join(out, ".qlora-train.lock"),
      JSON.stringify({ pid: process.ppid, host: hostname(), started: "then", procStart }),
    );
    const locked = await runCli(["train", file, "--nproc", "2", "--overwrite_output_dir", "true"]);
    expect(locked.code).toBe(2);
    expect(locked.err).toMatch(/^qlora: output_dir: .* is in use by another qlora train/);
    // shard_grad_op cannot resume (its optimizer shards are not saved): said before launch, not on every rank
    const ckpt = join(dir, "ckpt");
    mkdirSync(ckpt);
    writeFileSync(join(ckpt, "trainer_state.json"), JSON.stringify({ globalStep: 5 }));
    const sgo = await runCli([
      "train",
      file,
      "--nproc",
      "2",
      "--adapter",
      "lora",
      "--fsdp",
      "[shard_grad_op]",
      "--output_dir",
      join(dir, "fresh"),
      "--resume_from_checkpoint",
      ckpt,
    ]);
    expect(sgo.code).toBe(2);
    expect(sgo.err).toBe(
      "qlora: fsdp: shard_grad_op cannot resume a checkpoint yet (it does not save its sharded optimizer state); resume with full_shard or DDP, or start fresh",
    );
  });

  it("--nproc checks those keys before it starts a rank: one line, exit 2", async () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-nproc-check-"));
    const file = join(dir, "c.yaml");
    writeFileSync(join(dir, "d.jsonl"), '{"text": "a b c"}\n');
    const demoBase = fileURLToPath(new URL("../demo/base", import.meta.url));
    writeFileSync(
      file,
      `base_model: ${demoBase}\ndatasets: [{path: ${join(dir, "d.jsonl")}}]\nadapter: lora\nfsdp: [shard_grad_op]\nsave_steps: 5\n`,
    );
    const r = await runCli(["train", file, "--nproc", "2"]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(
      "qlora: fsdp: shard_grad_op cannot checkpoint its sharded optimizer state yet; drop save_steps or use full_shard",
    );
  });

  it("resolves ddp, fsdp and sharded-optimizer through the trainer's registry", () => {
    const r = rankRuntime(distributed, parse("gradient_accumulation_steps: 3\n"), world2());
    expect(r.strategy.name).toBe("ddp");
    expect(r.worldSize).toBe(2);
    expect(r.checkpointIO).toBeUndefined(); // DDP checkpoints are the CLI's own (trainable tensors + PEFT adapter)
    // FSDP gathers a layer inside backward with a blocking all-gather: the stand-in needs one
    const comm = { ...(world2() as object), allGatherBlocking: (x: Int32Array) => x } as never;
    const f = rankRuntime(distributed, parse("adapter: lora\nfsdp: [full_shard, auto_wrap]\n"), comm);
    expect(f.strategy).toBeInstanceOf(distributed.FsdpStrategy);
    expect(f.checkpointIO).toBeTypeOf("function"); // one PEFT adapter plus per-rank optimizer shards
    const z = rankRuntime(distributed, parse("fsdp: [shard_grad_op]\n"), world2());
    expect(z.strategy.name).toBe("sharded-optimizer");
  });
});

describe("qlora train --nproc: refusals before any rank starts", () => {
  /** A config whose base model and data exist (their contents are not read before the ranks start). */
  const config = () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-nproc-"));
    mkdirSync(join(dir, "m"));
    writeFileSync(join(dir, "m", "config.json"), "{}");
    writeFileSync(join(dir, "d.jsonl"), "");
    writeFileSync(join(dir, "c.yaml"), `base_model: ${join(dir, "m")}\ndatasets: [{path: ${join(dir, "d.jsonl")}}]\n`);
    return join(dir, "c.yaml");
  };
  const withEnv = async (env: Record<string, string>, run: () => Promise<void>) => {
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    try {
      await run();
    } finally {
      for (const [k, v] of Object.entries(saved))
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
    }
  };

  it("without mpirun: an error naming --nproc and what to install", async () => {
    await withEnv({ QLORA_MPIRUN: "/nonexistent/mpirun" }, async () => {
      const r = await runCli(["train", config(), "--nproc", "2"]);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/^qlora: --nproc 2: \/nonexistent\/mpirun not found \(install openmpi-bin\)/);
    });
  });

  it("a bad config is reported once, by the launcher, before mpirun runs", async () => {
    const file = config();
    writeFileSync(file, `${BASE}fsdp: [offload]\n`);
    const r = await runCli(["train", file, "--nproc", "2"]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/fsdp\[0\]: FSDP option "offload" is not supported/);
  });

  it("a missing dataset or base model is one launcher error before mpirun runs", async () => {
    const file = config();
    writeFileSync(file, BASE);
    const r = await runCli(["train", file, "--nproc", "2"]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^qlora: datasets\[0\]\.path: d\.jsonl does not exist$/);
    const noModel = await runCli(["train", config(), "--nproc", "2", "--base-model", "/nonexistent/m"]);
    expect(noModel.err).toMatch(/^qlora: base_model: \/nonexistent\/m is not a model directory \(no config\.json\)$/);
  });

  it("--nproc that contradicts the mpirun job this process belongs to is refused", async () => {
    await withEnv({ OMPI_COMM_WORLD_SIZE: "2", OMPI_COMM_WORLD_RANK: "0" }, async () => {
      const r = await runCli(["train", config(), "--nproc", "3"]);
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/--nproc 3: this process is one of 2 ranks mpirun started/);
    });
  });
});

describe("launcher helpers", () => {
  it("reads the rank from Open MPI's or a PMI launcher's environment", () => {
    expect(worldFromEnv({})).toEqual({ rank: 0, worldSize: 1, local: 1 });
    expect(
      worldFromEnv({ OMPI_COMM_WORLD_RANK: "2", OMPI_COMM_WORLD_SIZE: "4", OMPI_COMM_WORLD_LOCAL_SIZE: "2" }),
    ).toEqual({ rank: 2, worldSize: 4, local: 2 });
    expect(worldFromEnv({ PMI_RANK: "1", PMI_SIZE: "3" })).toEqual({ rank: 1, worldSize: 3, local: 3 });
  });

  it("rank 0 draws the bar through mpirun's pipe when the launcher's stderr is a terminal", () => {
    const written: string[] = [];
    const pipe = { isTTY: false, write: (s: string) => written.push(s) > 0 } as unknown as NodeJS.WriteStream;
    const t = launcherTerminal({ QLORA_TTY_COLUMNS: "120" }, pipe);
    expect(t?.isTTY).toBe(true);
    expect(t?.columns).toBe(120);
    t?.write("\x1b[1Gstep");
    expect(written).toEqual(["\x1b[1Gstep"]);
    expect(launcherTerminal({}, pipe)).toBeUndefined(); // no terminal at the launcher: plain log lines
    expect(launcherTerminal({ QLORA_TTY_COLUMNS: "0" }, pipe)).toBeUndefined();
    expect(launcherTerminal({ QLORA_TTY_COLUMNS: "80" }, { isTTY: true } as NodeJS.WriteStream)).toBeUndefined();
  });

  it("drops --nproc from the ranks' command line", () => {
    expect(withoutNproc(["train", "c.yaml", "--nproc", "2", "--lora-r", "4"])).toEqual([
      "train",
      "c.yaml",
      "--lora-r",
      "4",
    ]);
    expect(withoutNproc(["--json", "train", "--nproc=3", "c.yaml"])).toEqual(["--json", "train", "c.yaml"]);
  });
});

describe("qlora estimate --world-size N", () => {
  const llama7b = {
    architectures: ["LlamaForCausalLM"],
    hidden_size: 4096,
    intermediate_size: 11008,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    vocab_size: 32000,
    torch_dtype: "bfloat16",
  };
  const write = () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-est-"));
    writeFileSync(join(dir, "config.json"), JSON.stringify(llama7b));
    return dir;
  };

  it("--json: per-rank DDP and FSDP rows are perRankMemory's over the one-process plan's parts", async () => {
    const dir = write();
    const one = await runCli(["--json", "estimate", "--model", dir, "--seq-len", "1024"]);
    const four = await runCli(["--json", "estimate", "--model", dir, "--seq-len", "1024", "--world-size", "4"]);
    expect(four.code).toBe(0);
    const plan = JSON.parse(one.out);
    const got = JSON.parse(four.out);
    expect(got.totalBytes).toBe(plan.totalBytes); // the one-process plan is unchanged
    expect(got.worldSize).toBe(4);
    const parts = singleProcessParts(plan, 32);
    expect(got.perRank.ddp).toEqual(distributed.perRankMemory(parts, 4, "ddp"));
    // a 16-bit base is not sharded by FSDP (its units shard 4-bit weights): whole on every rank
    const dense = JSON.parse(
      (
        await runCli([
          "--json",
          "estimate",
          "--model",
          dir,
          "--seq-len",
          "1024",
          "--world-size",
          "4",
          "--quant",
          "none",
        ])
      ).out,
    );
    const bytesOf = (r: { rows: { item: string; bytes: number }[] }, start: string) =>
      r.rows.find((x) => x.item.startsWith(start))!.bytes;
    expect(bytesOf(dense.perRank.fsdp, "quantized base")).toBe(0);
    expect(bytesOf(dense.perRank.fsdp, "replicated")).toBe(
      bytesOf(dense.perRank.ddp, "replicated") + bytesOf(dense.perRank.ddp, "quantized base"),
    );
    // FSDP's units recompute their layer in backward, gradient_checkpointing or not: its activations are those of
    // the checkpointed plan
    const ckpt = JSON.parse(
      (await runCli(["--json", "estimate", "--model", dir, "--seq-len", "1024", "--gradient-checkpointing"])).out,
    );
    expect(got.perRank.fsdp).toEqual(distributed.perRankMemory(singleProcessParts(ckpt, 32), 4, "fsdp"));
    expect(got.perRank.fsdp.rows.find((r: { item: string }) => r.item.startsWith("activations")).bytes).toBeLessThan(
      got.perRank.ddp.rows.find((r: { item: string }) => r.item.startsWith("activations")).bytes,
    );
    // the parts are the plan's rows: nothing counted twice, nothing lost
    const row = (prefix: string) => plan.rows.find((r: { item: string }) => r.item.startsWith(prefix)).bytes;
    expect(parts.baseWeightBytes).toBe(row("base weights"));
    expect(parts.adapterBytes).toBe(row("LoRA parameters"));
    expect(parts.optimizerBytes).toBe(row("optimizer state"));
    const gradsAtPeak = plan.rows
      .filter((r: { item: string; phase: string }) => r.phase === plan.peakPhase && r.item.startsWith("LoRA gradients"))
      .reduce((s: number, r: { bytes: number }) => s + r.bytes, 0);
    expect(
      parts.baseWeightBytes + parts.replicatedBytes + parts.adapterBytes + parts.optimizerBytes + parts.activationBytes,
    ).toBeGreaterThanOrEqual(plan.totalBytes - gradsAtPeak);
    // FSDP keeps a quarter of the base (plus one layer gathered); DDP all of it plus the gradient buckets
    const fsdpBase = got.perRank.fsdp.rows.find((r: { item: string }) => r.item.startsWith("quantized base"));
    expect(fsdpBase.bytes).toBe(Math.ceil(parts.baseWeightBytes / 4));
    expect(got.perRank.fsdp.totalBytes).toBeLessThan(got.perRank.ddp.totalBytes);
    expect(got.perRank.ddp.totalBytes).toBeGreaterThan(plan.totalBytes);
  });

  it("prints both tables after the plan; a bad --world-size is a usage error", async () => {
    const dir = write();
    const r = await runCli(["estimate", "--model", dir, "--world-size", "2"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^DDP: every rank holds .* \(per rank, 2 ranks\)$/m);
    expect(r.out).toMatch(/^FSDP: each rank holds 1\/N .* \(per rank, 2 ranks\)$/m);
    expect(r.out.match(/^total per rank\s+\d/gm)).toHaveLength(2);
    const bad = await runCli(["estimate", "--model", dir, "--world-size", "0"]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/--world-size: expected a positive integer, got "0"/);
  });
});
