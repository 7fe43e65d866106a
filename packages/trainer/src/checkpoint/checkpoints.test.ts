import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tensor } from "@qlora/tensor";
import { afterAll, describe, expect, it } from "vitest";
import { latestCheckpoint, listCheckpoints, rotateCheckpoints, writeCheckpointAtomic } from "./checkpoints";
import { loadStateTree, saveStateTree } from "./state-tree";

const root = mkdtempSync(join(tmpdir(), "qlora-ckpt-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const fake = (dir: string, step: number) => {
  mkdirSync(join(dir, `checkpoint-${step}`), { recursive: true });
  writeFileSync(join(dir, `checkpoint-${step}`, "trainer_state.json"), "{}");
};

describe("checkpoint directories", () => {
  it("rotation keeps at most the limit, never deleting the newest or the best", async () => {
    const dir = join(root, "rot");
    for (const s of [10, 20, 30, 40]) fake(dir, s);
    const deleted = await rotateCheckpoints(dir, 2, join(dir, "checkpoint-10"));
    expect(deleted.map((d) => d.split("/").at(-1))).toEqual(["checkpoint-20", "checkpoint-30"]);
    expect(readdirSync(dir).sort()).toEqual(["checkpoint-10", "checkpoint-40"]);
    await rotateCheckpoints(dir, 1, join(dir, "checkpoint-10"));
    expect(readdirSync(dir).sort()).toEqual(["checkpoint-10", "checkpoint-40"]); // newest and best both stay
    // rotation renames a checkpoint aside before deleting it: what a kill mid-delete leaves is such a temporary
    // directory (never a checkpoint-N without its weights), and the next listing removes it
    mkdirSync(join(dir, `.tmp-checkpoint-deleting-checkpoint-20-1`, "adapter"), { recursive: true });
    writeFileSync(join(dir, `.tmp-checkpoint-deleting-checkpoint-20-1`, "trainer_state.json"), "{}");
    expect((await listCheckpoints(dir)).map((c) => c.step)).toEqual([10, 40]);
    expect(readdirSync(dir).sort()).toEqual(["checkpoint-10", "checkpoint-40"]);
  });

  it("incomplete and temporary directories are not checkpoints; a failed write leaves nothing", async () => {
    const dir = join(root, "list");
    fake(dir, 5);
    mkdirSync(join(dir, "checkpoint-7")); // no trainer_state.json: interrupted by hand
    mkdirSync(join(dir, ".tmp-checkpoint-9-123"));
    expect((await listCheckpoints(dir)).map((c) => c.step)).toEqual([5]);
    expect(readdirSync(dir)).not.toContain(".tmp-checkpoint-9-123");
    expect(await latestCheckpoint(dir)).toBe(join(dir, "checkpoint-5"));
    await expect(
      writeCheckpointAtomic(dir, 11, async (tmp) => {
        writeFileSync(join(tmp, "x"), "1");
        throw new Error("disk full");
      }),
    ).rejects.toThrow("disk full");
    expect(readdirSync(dir).filter((n) => n.includes("11"))).toEqual([]);
  });

  it("state trees round-trip tensors, typed arrays, maps and non-finite numbers bit for bit", async () => {
    const dir = join(root, "tree");
    mkdirSync(dir);
    const bits = new Float32Array([1.5, -0, Number.NaN, 3.4028234663852886e38, 1e-45]);
    const state = {
      t: tensor(bits, { shape: [5] }),
      b: tensor(new Uint16Array([0x3f80, 0x7fc0]), { dtype: "bf16", shape: [2] }),
      arr: new Uint8Array([1, 2, 255]),
      m: new Map([["k", { inf: Number.NEGATIVE_INFINITY }]]),
      list: [1, "two", null],
    };
    await saveStateTree(dir, "s", state);
    const back = (await loadStateTree(dir, "s")) as typeof state;
    expect(new Uint8Array((back.t.toHost() as Float32Array).buffer)).toEqual(new Uint8Array(bits.buffer));
    expect([...(back.b.toHost() as Uint16Array)]).toEqual([0x3f80, 0x7fc0]);
    expect(back.arr).toEqual(state.arr);
    expect(back.m.get("k")?.inf).toBe(Number.NEGATIVE_INFINITY);
    expect(back.list).toEqual([1, "two", null]);
  });
});
