import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PNG } from "pngjs";
import { describe, expect, it } from "vitest";
import { metricSeries } from "../src/report";
import { runCli } from "./helpers";

function makeRun(): string {
  const dir = mkdtempSync(join(tmpdir(), "qlora-run-"));
  const lines: string[] = [];
  for (let step = 1; step <= 40; step++) {
    const rec: Record<string, number> = {
      step,
      loss: 3 * Math.exp(-step / 15) + 0.2,
      learning_rate: 2e-4 * Math.min(1, step / 5),
      tokens_per_second: 900 + (step % 7) * 10,
      rss_mb: 400 + step,
    };
    if (step % 10 === 0) rec.eval_loss = 3.1 * Math.exp(-step / 15) + 0.3;
    lines.push(JSON.stringify(rec));
  }
  writeFileSync(join(dir, "metrics.jsonl"), `${lines.join("\n")}\n`);
  return dir;
}

const chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));

describe("qlora report", () => {
  it("writes a self-contained HTML page with one SVG chart per metric", async () => {
    const dir = makeRun();
    const r = await runCli(["report", dir]);
    expect(r.code).toBe(0);
    const html = readFileSync(join(dir, "report.html"), "utf8");
    expect(html.match(/<svg /g)?.length).toBe(4);
    expect(html).not.toMatch(/<script|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    expect(html).not.toMatch(/no data/);
    // the loss chart has a train and an eval line
    expect(html.match(/<path d="M/g)?.length).toBe(5);
  });

  it("a step recorded twice (a resumed run's file from an older version) is plotted once, its last record", () => {
    const records = [1, 2, 3, 2, 3, 4].map((step, i) => ({ step, loss: i < 3 ? 10 + step : step }));
    const [loss] = metricSeries(records);
    expect(loss.lines[0].points).toEqual([
      [1, 11],
      [2, 2],
      [3, 3],
      [4, 4],
    ]);
  });

  it("names the file and line of a corrupt metrics record", async () => {
    const dir = makeRun();
    writeFileSync(join(dir, "metrics.jsonl"), '{"step":1,"loss":2}\n{oops\n');
    const r = await runCli(["report", dir]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(`qlora: ${join(dir, "metrics.jsonl")}:2: not a JSON object (a metrics record)`);
    // JSON that is not a record (null, a number) and a non-numeric step: also named, not a TypeError
    writeFileSync(join(dir, "metrics.jsonl"), '{"step":1,"loss":1}\nnull\n');
    expect((await runCli(["report", dir])).err).toBe(
      `qlora: ${join(dir, "metrics.jsonl")}:2: not a JSON object (a metrics record)`,
    );
    writeFileSync(join(dir, "metrics.jsonl"), '{"step":"x","loss":"y"}\n');
    expect((await runCli(["report", dir])).err).toBe(
      `qlora: ${join(dir, "metrics.jsonl")}:1: "step" must be a number, got "x"`,
    );
    expect((await runCli(["inspect", dir])).err).toBe(
      `qlora: ${join(dir, "metrics.jsonl")}:1: "step" must be a number, got "x"`,
    );
  });

  it("a report.html that is a directory is named, and no temporary file is left", async () => {
    const dir = makeRun();
    mkdirSync(join(dir, "report.html"));
    const r = await runCli(["report", dir]);
    expect(r.code).not.toBe(0);
    expect(r.err).toContain("report.html is a directory");
    expect(readdirSync(dir).filter((f) => f.includes(".tmp-"))).toEqual([]);
  });

  it.skipIf(!chromium)(
    `renders in a real browser with non-blank plot areas (needs Debian's chromium${chromium ? "" : ": not installed, skipped"})`,
    async () => {
      const dir = makeRun();
      await runCli(["report", dir]);
      const png = join(dir, "shot.png");
      execFileSync(
        chromium!,
        [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--hide-scrollbars",
          `--screenshot=${png}`,
          "--window-size=1200,700",
          `file://${join(dir, "report.html")}`,
        ],
        { timeout: 60_000, stdio: "ignore" },
      );
      const img = PNG.sync.read(readFileSync(png));
      // Count coloured (non-grey) pixels: the plotted lines are the only saturated colours on the page.
      let coloured = 0;
      for (let i = 0; i < img.data.length; i += 4) {
        const [r, g, b] = [img.data[i], img.data[i + 1], img.data[i + 2]];
        if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
      }
      expect(img.width).toBe(1200);
      expect(coloured).toBeGreaterThan(2000);
    },
  );
});
