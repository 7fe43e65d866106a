import { describe, it, expect, afterAll, beforeAll } from "vitest";
import { readFile, writeFile, rm, readdir } from "node:fs/promises";
import { join } from "node:path";
import {
  SafetensorsError,
  ShardedSafetensors,
  ShardedSafetensorsWriter,
  openShardedSafetensors,
  parseShardSize,
  planShards,
  writeSafetensors,
  writeShardedSafetensors,
  type SafetensorsTensorData,
} from "../src/index";
import { expectCode, tempDir } from "./helpers";

function tensors(): SafetensorsTensorData[] {
  // sizes: 400, 400, 400, 1200, 40 bytes
  return [
    { name: "model.embed.weight", dtype: "F32", shape: [10, 10], data: new Float32Array(100).map((_, i) => i) },
    { name: "model.layers.0.w", dtype: "F32", shape: [100], data: new Float32Array(100).map((_, i) => -i) },
    { name: "model.layers.1.w", dtype: "F16", shape: [200], data: new Uint16Array(200).map((_, i) => i) },
    { name: "lm_head.weight", dtype: "I32", shape: [300], data: new Int32Array(300).map((_, i) => i * 7) },
    { name: "norm", dtype: "I8", shape: [40], data: new Int8Array(40).fill(-3) },
  ];
}

let tmp: Awaited<ReturnType<typeof tempDir>>;
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

describe("shard planning", () => {
  it("parses sizes like Hugging Face", () => {
    expect(parseShardSize("5GB")).toBe(5e9);
    expect(parseShardSize("500MiB")).toBe(500 * 2 ** 20);
    expect(parseShardSize(1000)).toBe(1000);
    expect(() => parseShardSize("lots")).toThrow(SafetensorsError);
    expect(() => parseShardSize(0)).toThrow(SafetensorsError);
  });
  it("splits greedily in order; an oversized tensor gets its own shard", () => {
    const plan = planShards(tensors(), 850);
    expect(plan.map((s) => s.map((t) => t.name))).toEqual([
      ["model.embed.weight", "model.layers.0.w"],
      ["model.layers.1.w"],
      ["lm_head.weight"],
      ["norm"],
    ]);
  });
});

describe("sharded write + lazy open", () => {
  it("writes HF-named shards and an index, and reads back the union", async () => {
    const dir = join(tmp.dir, "sharded");
    await rm(dir, { recursive: true, force: true });
    await import("node:fs/promises").then((m) => m.mkdir(dir));
    const ts = tensors();
    const res = await writeShardedSafetensors(dir, ts, { maxShardSize: 850, metadata: { format: "pt" } });
    expect(res.files).toEqual([
      "model-00001-of-00004.safetensors",
      "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors",
      "model-00004-of-00004.safetensors",
    ]);
    expect(await readdir(dir)).toEqual([...res.files, "model.safetensors.index.json"].sort());
    const index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8"));
    expect(index.metadata.total_size).toBe(2440);
    expect(Object.keys(index.weight_map)).toEqual(ts.map((t) => t.name).sort());
    expect(index.weight_map["lm_head.weight"]).toBe("model-00003-of-00004.safetensors");

    for (const p of [dir, join(dir, "model.safetensors.index.json")]) {
      const s = await openShardedSafetensors(p);
      expect([...s.names].sort()).toEqual(ts.map((t) => t.name).sort());
      expect(s.totalSize).toBe(2440);
      expect(s.metadata).toEqual({ format: "pt" });
      for (const t of ts) {
        const d = t.data;
        expect(await s.read(t.name)).toEqual(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
        expect(s.info(t.name).shape).toEqual(t.shape);
      }
      expect(Array.from(await s.readTyped("lm_head.weight", "I32")).slice(0, 3)).toEqual([0, 7, 14]);
      const order: string[] = [];
      for await (const { info } of s.iterate()) order.push(info.name);
      expect(order).toEqual(ts.map((t) => t.name));
      let bytes = 0;
      for await (const { data } of s.iterateChunks({ chunkSize: 100 })) bytes += data.byteLength;
      expect(bytes).toBe(2440);
      await s.close();
    }
  });

  it("a single shard is model.safetensors without an index, and opens from the directory", async () => {
    const { dir, cleanup } = await tempDir();
    const ts = tensors();
    const res = await writeShardedSafetensors(join(dir, "new", "model"), ts);
    expect(res).toEqual({ files: ["model.safetensors"], indexFile: undefined });
    const s = await ShardedSafetensors.open(join(dir, "new", "model"));
    expect(s.indexPath).toBeUndefined();
    expect(s.names).toEqual(ts.map((t) => t.name));
    await s.close();
    await cleanup();
  });

  it("a save over an earlier one removes that save's weight files, as save_pretrained does", async () => {
    const { dir, cleanup } = await tempDir();
    const ts = tensors();
    await writeShardedSafetensors(dir, ts, { maxShardSize: 850 });
    await writeFile(join(dir, "config.json"), "{}");
    await writeFile(join(dir, "other.safetensors"), "kept: another prefix");
    // one file over three shards: the old index would otherwise shadow the new model.safetensors
    ts[0] = { ...ts[0], data: new Float32Array(100).fill(7) };
    await writeShardedSafetensors(dir, ts);
    expect((await readdir(dir)).sort()).toEqual(["config.json", "model.safetensors", "other.safetensors"]);
    const s = await openShardedSafetensors(dir);
    expect(Array.from(await s.readTyped("model.embed.weight", "F32")).slice(0, 2)).toEqual([7, 7]);
    await s.close();
    // and back to shards, then to fewer shards: only the newest save's files remain
    for (const maxShardSize of [850, 1300]) {
      const res = await writeShardedSafetensors(dir, ts, { maxShardSize });
      const files = (await readdir(dir)).filter((f) => f.startsWith("model")).sort();
      expect(files).toEqual([...res.files, res.indexFile].sort());
    }
    await cleanup();
  });

  it("the streaming sharded writer takes chunks across shard boundaries", async () => {
    const { dir, cleanup } = await tempDir();
    const ts = tensors();
    const w = await ShardedSafetensorsWriter.create(dir, ts, { maxShardSize: 850 });
    for (const t of ts) {
      const b = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      for (let o = 0; o < b.length; o += 128) await w.writeChunk(t.name, b.subarray(o, o + 128));
    }
    await w.finish();
    const s = await openShardedSafetensors(dir);
    expect(Array.from(await s.readTyped("model.embed.weight", "F32")).slice(0, 4)).toEqual([0, 1, 2, 3]);
    await s.close();
    const w2 = await ShardedSafetensorsWriter.create(dir, ts, { maxShardSize: 850, prefix: "other" });
    await w2.writeTensor(ts[0].name, ts[0].data);
    await expectCode(w2.finish(), SafetensorsError, "write_incomplete");
    expect((await readdir(dir)).filter((f) => f.startsWith("other") || f.startsWith(".other")).sort()).toEqual([]);
    await cleanup();
  });
});

describe("index validation", () => {
  async function setup(): Promise<{
    dir: string;
    cleanup: () => Promise<void>;
    index: { metadata: { total_size: number }; weight_map: Record<string, string> };
  }> {
    const t = await tempDir();
    await writeShardedSafetensors(t.dir, tensors(), { maxShardSize: 850 });
    const index = JSON.parse(await readFile(join(t.dir, "model.safetensors.index.json"), "utf8"));
    return { ...t, index };
  }
  const idx = (dir: string) => join(dir, "model.safetensors.index.json");

  it("missing weight_map", async () => {
    const { dir, cleanup } = await setup();
    await writeFile(idx(dir), JSON.stringify({ metadata: {} }));
    await expectCode(openShardedSafetensors(dir), SafetensorsError, "index_missing_weight_map");
    await cleanup();
  });
  it("index not JSON / weight_map wrong type / path traversal / bad total_size", async () => {
    const { dir, cleanup, index } = await setup();
    await writeFile(idx(dir), "{nope");
    await expectCode(openShardedSafetensors(dir), SafetensorsError, "index_json");
    await writeFile(idx(dir), JSON.stringify({ weight_map: [] }));
    await expectCode(openShardedSafetensors(dir), SafetensorsError, "index_json");
    await writeFile(idx(dir), JSON.stringify({ weight_map: { ...index.weight_map, norm: "../../etc/passwd" } }));
    const e = await expectCode(openShardedSafetensors(dir), SafetensorsError, "index_json");
    expect(e.tensor).toBe("norm");
    await writeFile(idx(dir), JSON.stringify({ ...index, metadata: { total_size: "big" } }));
    await expectCode(openShardedSafetensors(dir), SafetensorsError, "index_json");
    await cleanup();
  });
  it("shard missing", async () => {
    const { dir, cleanup } = await setup();
    await rm(join(dir, "model-00002-of-00004.safetensors"));
    const e = await expectCode(openShardedSafetensors(dir), SafetensorsError, "shard_missing");
    expect(e.message).toContain("model-00002-of-00004.safetensors");
    await cleanup();
  });
  it("tensor listed in the wrong shard", async () => {
    const { dir, cleanup, index } = await setup();
    index.weight_map.norm = "model-00003-of-00004.safetensors";
    index.weight_map["lm_head.weight"] = "model-00004-of-00004.safetensors";
    await writeFile(idx(dir), JSON.stringify(index));
    const e = await expectCode(openShardedSafetensors(dir), SafetensorsError, "wrong_shard");
    expect(e.tensor).toBe("lm_head.weight");
    expect(e.message).toContain(
      'puts it in "model-00004-of-00004.safetensors", which does not contain it (it is in "model-00003-of-00004.safetensors")',
    );
    await cleanup();
  });
  it("tensor in a shard but not in the weight_map", async () => {
    const { dir, cleanup, index } = await setup();
    delete index.weight_map.norm;
    index.weight_map["lm_head.weight"] = "model-00003-of-00004.safetensors";
    await writeFile(idx(dir), JSON.stringify(index));
    // shard 4 is no longer referenced, so it is not opened; now make shard 3 hold an extra tensor
    await writeSafetensors(join(dir, "model-00003-of-00004.safetensors"), [
      tensors()[3],
      { name: "extra", dtype: "U8", shape: [1], data: new Uint8Array(1) },
    ]);
    const e = await expectCode(openShardedSafetensors(dir), SafetensorsError, "unlisted_tensor");
    expect(e.tensor).toBe("extra");
    await cleanup();
  });
  it("a corrupt shard is reported with the shard's file name", async () => {
    const { dir, cleanup } = await setup();
    await writeFile(join(dir, "model-00003-of-00004.safetensors"), new Uint8Array([1, 2, 3]));
    const e = await expectCode(openShardedSafetensors(dir), SafetensorsError, "header_length");
    expect(e.file).toContain("model-00003-of-00004.safetensors");
    await cleanup();
  });
  it("empty directory", async () => {
    const { dir, cleanup } = await tempDir();
    await expectCode(openShardedSafetensors(dir), SafetensorsError, "shard_missing");
    await cleanup();
  });
});
