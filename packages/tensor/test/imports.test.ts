import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (p.endsWith(".ts") && !p.endsWith(".test.ts") && !p.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

/** Relative imports that exist at run time: `import type` / `export type` (erased) do not count. */
export function runtimeImports(code: string): string[] {
  const specs: string[] = [];
  const re = /^\s*(import|export)\s+(type\s+)?([^;]*?)\s*from\s*["'](\.[^"']+)["']|^\s*import\s*["'](\.[^"']+)["']/gm;
  for (const m of code.matchAll(re)) {
    if (m[5]) specs.push(m[5]);
    else if (!m[2]) {
      // `import { type A, type B } from` is erased too
      const names = m[3]
        .replace(/^\{|\}$/g, "")
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      const allTypes = m[3].startsWith("{") && names.length > 0 && names.every((n) => n.startsWith("type "));
      if (!allTypes) specs.push(m[4]);
    }
  }
  return specs;
}

function resolveSpec(from: string, spec: string): string {
  const base = resolve(dirname(from), spec);
  for (const cand of [base, `${base}.ts`, join(base, "index.ts")]) {
    try {
      if (statSync(cand).isFile()) return cand;
    } catch {}
  }
  throw new Error(`${relative(root, from)} imports "${spec}", which does not resolve`);
}

/** Every import cycle among src/**\/*.ts (runtime imports only), as lists of relative paths. */
function findCycles(files: string[]): string[][] {
  const graph = new Map(files.map((f) => [f, runtimeImports(readFileSync(f, "utf8")).map((s) => resolveSpec(f, s))]));
  const cycles: string[][] = [];
  const state = new Map<string, "active" | "done">();
  const stack: string[] = [];
  const visit = (f: string): void => {
    state.set(f, "active");
    stack.push(f);
    for (const g of graph.get(f) ?? []) {
      if (state.get(g) === "active") cycles.push([...stack.slice(stack.indexOf(g)), g].map((p) => relative(root, p)));
      else if (!state.has(g)) visit(g);
    }
    stack.pop();
    state.set(f, "done");
  };
  for (const f of files) if (!state.has(f)) visit(f);
  return cycles;
}

describe("no import cycles in @qlora/tensor", () => {
  it("src/**/*.ts has no cycle of runtime imports", () => {
    expect(findCycles(sourceFiles(join(root, "src")))).toEqual([]);
  });
  it("the detector sees type-only imports as erased and finds a planted cycle", () => {
    expect(
      runtimeImports('import type { A } from "./a";\nimport { type B } from "./b";\nimport { c } from "./c";'),
    ).toEqual(["./c"]);
    expect(runtimeImports('export { x } from "./x";\nexport type { Y } from "./y";\nimport "./side";')).toEqual([
      "./x",
      "./side",
    ]);
    const cyc = findCycles([join(root, "test/fixtures/cycle/a.ts"), join(root, "test/fixtures/cycle/b.ts")]);
    expect(cyc.length).toBe(1);
  });
});

// Every module can be the first one loaded (no top-level use of a binding that is not initialised yet).
describe("module entry order", () => {
  for (const entry of ["src/ops.ts", "src/grad-rules.ts", "src/autograd.ts", "src/define-op.ts", "src/tensor.ts"]) {
    it(`importing ${entry} first works`, () => {
      const code = `import("./${entry}").then(async () => { const t = await import("./src/index.ts"); const x = t.tensor([1,2,3], { requiresGrad: true }); const l = t.maximum(x, 2).sum(); l.backward(); console.log(x.grad.toArray().join(",")); })`;
      const out = execFileSync(process.execPath, ["--import", "tsx", "-e", code], {
        cwd: root,
        encoding: "utf8",
        env: { ...process.env, NODE_OPTIONS: "--conditions=@qlora/source" },
      });
      expect(out.trim()).toBe("0,0.5,1");
    });
  }
});
