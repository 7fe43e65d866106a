import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { f32ToBf16, Nf4Error, quantize4bit, recoverAbsmax } from "@qlora/nf4";
import { quantize4bitParallel } from "@qlora/nf4/node";
import { randn } from "./helpers";

describe("@qlora/nf4/node quantize4bitParallel", () => {
  const x = randn(64 * 3000 + 17, 5);
  it("byte-identical to quantize4bit (f32, 3 workers, double quant)", async () => {
    const a = await quantize4bitParallel(x, {
      threads: 3,
      minParallelElements: 0,
      doubleQuant: true,
      quantType: "fp4",
    });
    const b = quantize4bit(x, { doubleQuant: true, quantType: "fp4" });
    expect(a.packed).toEqual(b.packed);
    expect(recoverAbsmax(a)).toEqual(recoverAbsmax(b));
    expect(a.packed.buffer).toBeInstanceOf(ArrayBuffer);
  });
  it("bf16 input in a SharedArrayBuffer (zero-copy), blocksize 256", async () => {
    const bits = f32ToBf16(x);
    const sab = new Uint16Array(new SharedArrayBuffer(bits.byteLength));
    sab.set(bits);
    const a = await quantize4bitParallel(sab, {
      threads: 2,
      minParallelElements: 0,
      dtype: "bfloat16",
      blocksize: 256,
    });
    expect(a.packed).toEqual(quantize4bit(bits, { dtype: "bfloat16", blocksize: 256 }).packed);
  });
  it("rejects bad options with Nf4Error", async () => {
    await expect(quantize4bitParallel(x, { blocksize: 7 })).rejects.toBeInstanceOf(Nf4Error);
    await expect(quantize4bitParallel(x, { threads: 0 })).rejects.toThrow(
      /options\.threads: expected a positive integer/,
    );
  });
});

describe("main entry is browser-safe", () => {
  it("no node: imports in any non-test source reachable from src/index.ts", () => {
    const dir = fileURLToPath(new URL("../src/", import.meta.url));
    const seen = new Set<string>();
    const visit = (rel: string) => {
      if (seen.has(rel)) return;
      seen.add(rel);
      const text = readFileSync(dir + rel, "utf8");
      expect(text, rel).not.toMatch(/from\s+["']node:|import\(["']node:|require\(/);
      for (const m of text.matchAll(/from\s+["'](\.[^"']+)["']/g)) {
        const parts = (rel.includes("/") ? `${rel.slice(0, rel.lastIndexOf("/") + 1)}${m[1]}` : m[1]).split("/");
        const norm: string[] = [];
        for (const p of parts) {
          if (p === "." || p === "") continue;
          if (p === "..") norm.pop();
          else norm.push(p);
        }
        visit(`${norm.join("/")}.ts`);
      }
    };
    visit("index.ts");
    expect(seen.size).toBeGreaterThan(10);
    expect([...seen].some((f) => f.startsWith("node"))).toBe(false);
    expect(readdirSync(dir)).toContain("node.ts");
  });
});

describe("Nf4WorkerPool", () => {
  it("reuses its workers across tensors and concurrent calls", async () => {
    const { Nf4WorkerPool } = await import("@qlora/nf4/node");
    const pool = new Nf4WorkerPool(2);
    try {
      const xs = [randn(64 * 500 + 3, 1), randn(32 * 999, 2), randn(4096 * 3 + 1, 3)];
      const opts = [
        { blocksize: 64 },
        { blocksize: 32, quantType: "fp4" as const },
        { blocksize: 4096, doubleQuant: true },
      ];
      const got = await Promise.all(xs.map((x, k) => pool.quantize(x, opts[k])));
      got.forEach((g, k) => {
        expect(g.packed).toEqual(quantize4bit(xs[k], opts[k]).packed);
      });
    } finally {
      await pool.close();
    }
    await expect(pool.quantize(new Float32Array(4))).rejects.toThrow(/closed/);
  });
});

describe("workers under the parent's Node flags", () => {
  it("quantizes in workers when the parent ran `node --input-type=module -e`", () => {
    // Workers inherit the parent's flags. From sources the worker is tsx's eval code, which Node allows under
    // --input-type, so this checks the flag filter keeps the source path working; the built package's worker
    // file, which Node refuses under --input-type, is checked by scripts/pack-check.mjs.
    const script = `
      import { quantize4bit } from "@qlora/nf4";
      import { quantize4bitParallel } from "@qlora/nf4/node";
      const x = new Float32Array(64 * 1000).map((_, i) => Math.sin(i));
      const q = await quantize4bitParallel(x, { threads: 2, minParallelElements: 0 });
      const same = q.packed.every((b, i) => b === quantize4bit(x).packed[i]);
      console.log(JSON.stringify({ same, bytes: q.packed.length }));`;
    const out = execFileSync(
      process.execPath,
      ["--import", "tsx", "--conditions=@qlora/source", "--input-type=module", "-e", script],
      { cwd: fileURLToPath(new URL("..", import.meta.url)), encoding: "utf8" },
    );
    expect(JSON.parse(out.trim().split("\n").pop()!)).toEqual({ same: true, bytes: 32000 });
  }, 60_000);

  it("quantizes in workers from sources when the process runs in a directory without tsx", () => {
    // the eval'd worker used to import "tsx" by bare name, resolved from the process's directory
    const dir = mkdtempSync(join(tmpdir(), "qlora-nf4-cwd-"));
    const entry = pathToFileURL(fileURLToPath(new URL("../src/node.ts", import.meta.url))).href;
    const script = `
      const { quantize4bitParallel } = await import(${JSON.stringify(entry)});
      const q = await quantize4bitParallel(new Float32Array(64 * 100).fill(0.5), { threads: 2, minParallelElements: 0 });
      console.log(JSON.stringify({ bytes: q.packed.length }));`;
    const tsx = fileURLToPath(import.meta.resolve("tsx"));
    const out = execFileSync(
      process.execPath,
      ["--import", pathToFileURL(tsx).href, "--input-type=module", "-e", script],
      {
        cwd: dir,
        encoding: "utf8",
      },
    );
    expect(JSON.parse(out.trim().split("\n").pop()!)).toEqual({ bytes: 3200 });
  }, 60_000);
});
