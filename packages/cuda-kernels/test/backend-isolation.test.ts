// Sibling backends stay apart: @qlora/cuda-kernels and @qlora/cpu-kernels both build on @qlora/tensor and
// never import, include or bundle each other (what both need lives in @qlora/tensor or is a small copy).
// This scans every source, script, build and dev file of both packages for a reference to the other
// outside comments: a TS/JS import, require or path string, a C/C++ #include, a binding.gyp entry, a
// package.json dependency.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const packages = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const SKIP_DIRS = new Set(["node_modules", "build", "dist", "gpu-bundle", "prebuilds", ".prebuild", ".turbo"]);
const CODE = /\.(ts|mts|mjs|cjs|js|cc|cpp|h|hpp|cu|cuh|gyp|gypi|json|sh|py)$/;

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    if (e.isDirectory()) return SKIP_DIRS.has(e.name) ? [] : files(join(dir, e.name));
    return CODE.test(e.name) ? [join(dir, e.name)] : [];
  });
}

/** Lines of `text` that name `sibling` inside a quoted string or an #include, comments excluded. */
export function siblingReferences(text: string, sibling: string): string[] {
  const withoutBlockComments = text.replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, " "));
  const hits: string[] = [];
  withoutBlockComments.split("\n").forEach((raw, i) => {
    const line = raw.replace(/(^|\s)\/\/.*$/, "").replace(/^\s*#(?!\s*include).*$/, "");
    const quoted = line.match(/(["'`])(?:(?!\1).)*\1|<[^>]*>/g) ?? [];
    if (quoted.some((q) => q.includes(sibling))) hits.push(`${i + 1}: ${raw.trim()}`);
  });
  return hits;
}

describe.each([
  ["cuda-kernels", "cpu-kernels"],
  ["cpu-kernels", "cuda-kernels"],
])("@qlora/%s never reaches into @qlora/%s", (own, sibling) => {
  it("no file imports, includes, bundles or depends on the sibling", () => {
    const self = fileURLToPath(import.meta.url); // its control strings name the sibling on purpose
    const found = files(join(packages, own))
      .filter((f) => f !== self)
      .flatMap((f) => siblingReferences(readFileSync(f, "utf8"), sibling).map((h) => `${relative(packages, f)}:${h}`));
    expect(found).toEqual([]);
  });
});

describe("the scan itself", () => {
  it("finds imports, requires, path strings, includes and dependencies, and ignores comments", () => {
    const text = [
      'import "../../../cpu-kernels/src/fused.test";',
      'const m = await import("@qlora/cpu-kernels");',
      'const p = join(repo, "packages", "cpu-kernels", "build");',
      '#include "../../cpu-kernels/csrc/vec_math.h"',
      '    "@qlora/cpu-kernels": "workspace:*",',
      "// a comment naming cpu-kernels/src is fine",
      "/* so is a block comment about '@qlora/cpu-kernels' */",
      "# a shell comment about cpu-kernels",
      "const fine = 1; // trailing comment on cpu-kernels",
    ].join("\n");
    expect(siblingReferences(text, "cpu-kernels").map((h) => Number(h.split(":")[0]))).toEqual([1, 2, 3, 4, 5]);
  });
});
