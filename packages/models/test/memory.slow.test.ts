/**
 * [slow] Peak RSS while loading a generated ~300M-parameter bf16 checkpoint (2 shards, 0.58 GB) and
 * quantizing it to NF4+DQ stays ≤ final in-memory model size + largest source tensor + 256 MiB.
 * The load runs in a fresh process (bench/load-ours.ts) so RSS is its own. Skip with QLORA_SKIP_SLOW=1.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";
import { THREE_HUNDRED_M, writeBenchCheckpoint } from "../bench/checkpoint";
import { tempDir } from "./helpers";

const skip = process.env.QLORA_SKIP_SLOW === "1";
const dir = tempDir("qlora-models-300m-");
afterAll(() => dir.remove());

it.skipIf(skip)(
  `[slow] peak RSS loading a ~300M bf16 checkpoint ≤ final size + largest tensor + 256 MiB${skip ? " (skipped: QLORA_SKIP_SLOW=1)" : ""}`,
  async () => {
    const info = await writeBenchCheckpoint(dir.path, THREE_HUNDRED_M, 2);
    expect(info.params).toBeGreaterThan(280e6);
    const script = fileURLToPath(new URL("../bench/load-ours.ts", import.meta.url));
    const r = spawnSync(process.execPath, ["--import", "tsx", "--conditions=@qlora/source", script, dir.path], {
      encoding: "utf8",
    });
    expect(r.status, r.stderr).toBe(0);
    const m = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(m.largest_tensor_bytes).toBe(info.largestTensorBytes);
    expect(m.final_model_bytes).toBeGreaterThan(100e6); // NF4+DQ linears + bf16 embeddings and head
    expect(m.peak_rss_growth_bytes).toBeLessThanOrEqual(m.final_model_bytes + m.largest_tensor_bytes + 256 * 2 ** 20);
    expect(join(dir.path, info.files[0])).toContain("model-00001-of-00002");
  },
  300_000,
);
