/**
 * `qlora report <run_dir>`: one self-contained HTML page (inline SVG, no scripts, no network) plotting train and
 * eval loss, learning rate, tokens/s and memory over steps, from the run's JSONL metrics file.
 */
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CliError } from "./errors";

export interface MetricSeries {
  title: string;
  unit: string;
  lines: { label: string; color: string; points: [number, number][] }[];
}

/** Which JSONL fields feed which chart; the first field present in a record wins. */
type Line = { label: string; color: string; keys: string[]; scale?: Record<string, number> };
const CHARTS: { title: string; unit: string; lines: Line[] }[] = [
  {
    title: "Loss",
    unit: "",
    lines: [
      { label: "train", color: "#1f77b4", keys: ["loss", "train_loss"] },
      { label: "eval", color: "#d62728", keys: ["eval_loss"] },
    ],
  },
  { title: "Learning rate", unit: "", lines: [{ label: "lr", color: "#2ca02c", keys: ["learning_rate", "lr"] }] },
  {
    title: "Throughput",
    unit: "tokens/s",
    lines: [{ label: "tokens/s", color: "#9467bd", keys: ["tokens_per_second", "tokensPerSecond", "tokens_per_s"] }],
  },
  {
    title: "Memory",
    unit: "MB",
    lines: [
      {
        label: "rss",
        color: "#8c564b",
        keys: ["rss_mb", "memory/rss", "rss_bytes"],
        scale: { "memory/rss": 1e-6, rss_bytes: 1e-6 },
      },
    ],
  },
];

export function readMetrics(file: string): Record<string, unknown>[] {
  if (!existsSync(file)) throw new CliError("BAD_PATH", `${file}: no metrics file (a run writes metrics.jsonl)`);
  const records: Record<string, unknown>[] = [];
  readFileSync(file, "utf8")
    .split("\n")
    .forEach((line, i) => {
      if (line.trim() === "") return;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        value = undefined;
      }
      if (value === null || typeof value !== "object" || Array.isArray(value))
        throw new CliError("BAD_PATH", `${file}:${i + 1}: not a JSON object (a metrics record)`);
      const step = (value as Record<string, unknown>).step ?? (value as Record<string, unknown>).global_step;
      if (step !== undefined && typeof step !== "number")
        throw new CliError("BAD_PATH", `${file}:${i + 1}: "step" must be a number, got ${JSON.stringify(step)}`);
      records.push(value as Record<string, unknown>);
    });
  return records;
}

/**
 * The charts' points, one per step and line, in step order. A file an older version wrote after a resume holds
 * the resumed steps twice; the last record of a step wins (the run that went on from there).
 */
export function metricSeries(records: Record<string, unknown>[]): MetricSeries[] {
  return CHARTS.map((chart) => ({
    title: chart.title,
    unit: chart.unit,
    lines: chart.lines.map((line) => {
      const byStep = new Map<number, number>();
      for (const r of records) {
        const step = r.step ?? r.global_step;
        const key = line.keys.find((k) => typeof r[k] === "number" && Number.isFinite(r[k]));
        if (typeof step === "number" && key) byStep.set(step, (r[key] as number) * (line.scale?.[key] ?? 1));
      }
      return {
        label: line.label,
        color: line.color,
        points: [...byStep].sort((a, b) => a[0] - b[0]),
      };
    }),
  }));
}

const W = 560;
const H = 260;
const PAD = { left: 64, right: 16, top: 28, bottom: 36 };

function niceNumber(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(1) : Number(v.toPrecision(3)).toString();
}

function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** One chart as an SVG element; an empty series is drawn as a labelled empty frame. */
export function chartSvg(series: MetricSeries): string {
  const all = series.lines.flatMap((l) => l.points);
  const frame = `<rect x="${PAD.left}" y="${PAD.top}" width="${W - PAD.left - PAD.right}" height="${H - PAD.top - PAD.bottom}" fill="#fafafa" stroke="#ccc"/>`;
  const title = `<text x="${PAD.left}" y="18" font-size="14" font-weight="bold">${escapeXml(series.title)}${series.unit ? ` (${escapeXml(series.unit)})` : ""}</text>`;
  if (all.length === 0)
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" class="chart empty">${title}${frame}<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#888">no data</text></svg>`;
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x: number) => PAD.left + ((x - x0) / (x1 - x0 || 1)) * (W - PAD.left - PAD.right);
  const sy = (y: number) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  const ticks = [0, 0.5, 1].map((t) => {
    const y = y0 + t * (y1 - y0);
    return `<text x="${PAD.left - 6}" y="${sy(y) + 4}" font-size="11" text-anchor="end">${niceNumber(y)}</text>`;
  });
  const xLabels = `<text x="${PAD.left}" y="${H - 12}" font-size="11">step ${x0}</text><text x="${W - PAD.right}" y="${H - 12}" font-size="11" text-anchor="end">step ${x1}</text>`;
  const paths = series.lines
    .filter((l) => l.points.length > 0)
    .map((l) => {
      const d = l.points.map((p, i) => `${i === 0 ? "M" : "L"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      const dots =
        l.points.length === 1
          ? `<circle cx="${sx(l.points[0][0])}" cy="${sy(l.points[0][1])}" r="3" fill="${l.color}"/>`
          : "";
      return `<path d="${d}" fill="none" stroke="${l.color}" stroke-width="2"/>${dots}`;
    });
  const legend = series.lines
    .map(
      (l, i) =>
        `<text x="${W - PAD.right - 4}" y="${PAD.top + 16 + i * 14}" font-size="11" text-anchor="end" fill="${l.color}">${escapeXml(l.label)}</text>`,
    )
    .join("");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" class="chart">${title}${frame}${ticks.join("")}${xLabels}${paths.join("")}${legend}</svg>`;
}

export function reportHtml(title: string, records: Record<string, unknown>[]): string {
  const charts = metricSeries(records).map(chartSvg).join("\n");
  const last = records.length > 0 ? records[records.length - 1] : {};
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeXml(title)}</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;background:#fff;color:#222}.grid{display:flex;flex-wrap:wrap;gap:16px}
pre{background:#f4f4f4;padding:8px}</style></head>
<body><h1>${escapeXml(title)}</h1>
<p>${records.length} metric records; last: <code>${escapeXml(JSON.stringify(last))}</code></p>
<div class="grid">
${charts}
</div></body></html>
`;
}

/** Write `<runDir>/report.html` from `<runDir>/metrics.jsonl` (atomically); returns the path. */
export function writeReport(runDir: string): string {
  const records = readMetrics(join(runDir, "metrics.jsonl"));
  const out = join(runDir, "report.html");
  if (existsSync(out) && statSync(out).isDirectory())
    throw new CliError("BAD_PATH", `${out} is a directory; the report is written to that path as a file`);
  const tmp = `${out}.tmp-${process.pid}`;
  writeFileSync(tmp, reportHtml(`qlora run: ${runDir}`, records));
  try {
    renameSync(tmp, out);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  return out;
}
