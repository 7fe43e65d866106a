// ISA skip accounting for the kernel tests. Every ISA path of a kernel family, on every architecture we
// ship, is either run on this host or registered as a visibly skipped test whose name says why; nothing
// is filtered out of the list silently. `isaAccountingTest` fails when a path the binary was compiled
// with (native isaPaths()) or a path of the other architecture is neither run nor reported skipped.
import { expect, it } from "vitest";
import { loadNative } from "../src/load";

export type IsaFamily = "gemm" | "fused";

interface IsaNative {
  isaInfo(): { avx2: boolean; avx512f: boolean; avx512bf16: boolean };
  isaPaths(): { arch: string; gemm: string[]; fused: string[] };
}
const native = loadNative() as unknown as IsaNative;
const info = native.isaInfo();
const compiled = native.isaPaths();

interface PathSpec {
  arch: "any" | "x64" | "arm64";
  /** what the CPU must have, for the skip reason */
  needs: string;
  runnable: () => boolean;
}

const arm64Reason =
  "arm64 path: this host is x86-64, so it runs in test/arm64-qemu.test.ts (cross-compiled driver under qemu-aarch64)";
const SPECS: Record<string, PathSpec> = {
  scalar: { arch: "any", needs: "nothing", runnable: () => true },
  sse: { arch: "x64", needs: "SSE4.2 (x86-64-v2 baseline)", runnable: () => compiled.arch === "x64" },
  avx2: { arch: "x64", needs: "AVX2 + FMA", runnable: () => compiled.arch === "x64" && info.avx2 },
  avx512: { arch: "x64", needs: "AVX-512 F/BW/VL/DQ", runnable: () => compiled.arch === "x64" && info.avx512f },
  neon: { arch: "arm64", needs: "an arm64 CPU (NEON)", runnable: () => compiled.arch === "arm64" },
};

/** Every path of a family on any architecture we ship (x64 and arm64). */
export const ALL_PATHS: Record<IsaFamily, readonly string[]> = {
  gemm: ["scalar", "avx2", "avx512", "neon"],
  fused: ["sse", "avx2", "avx512", "neon"],
};

export interface IsaCase {
  name: string;
  /** level for the fused family (setFusedIsaLevel), the gemmIsa name for gemm */
  level: number;
  run: boolean;
  reason: string;
}

const ledger = new Map<IsaFamily, Map<string, "ran" | "skipped">>();

function skipReason(name: string): string {
  const spec = SPECS[name];
  if (!spec) return `unknown ISA path ${name}`;
  if (spec.arch === "arm64") return arm64Reason;
  if (spec.arch === "x64" && compiled.arch !== "x64") return `x86-64 path: this host is ${compiled.arch}`;
  return `this CPU lacks ${spec.needs}`;
}

/** The cases of a family: runnable ones to run, the others to report as skipped (use `isaSuite`). */
export function isaCases(family: IsaFamily): IsaCase[] {
  const fusedLevels = compiled.fused;
  return ALL_PATHS[family].map((name) => {
    const run = SPECS[name]?.runnable() ?? false;
    const level = family === "fused" ? fusedLevels.indexOf(name) : -1;
    return { name, level, run, reason: run ? "" : skipReason(name) };
  });
}

function record(family: IsaFamily, name: string, outcome: "ran" | "skipped"): void {
  const m = ledger.get(family) ?? new Map<string, "ran" | "skipped">();
  ledger.set(family, m);
  if (m.get(name) !== "ran") m.set(name, outcome);
}

/**
 * Registers `body(c)` for every runnable path of the family and one skipped test per path this host
 * cannot run (`<what> on <path>: skipped, <reason>`). Returns the runnable cases.
 */
export function isaSuite(family: IsaFamily, what: string, body?: (c: IsaCase) => void): IsaCase[] {
  const cases = isaCases(family);
  for (const c of cases) {
    if (c.run) {
      record(family, c.name, "ran");
      body?.(c);
    } else {
      record(family, c.name, "skipped");
      it.skip(`${what} on ${c.name}: skipped, ${c.reason}`, () => {});
    }
  }
  return cases.filter((c) => c.run);
}

/**
 * The accounting check: every path of the family (compiled into this binary, or of the other
 * architecture) was registered in this file as run or as a skipped test.
 */
export function isaAccountingTest(family: IsaFamily): void {
  it(`ISA accounting (${family}): every path ran or was reported skipped`, () => {
    const seen = ledger.get(family) ?? new Map();
    const wanted = new Set([...compiled[family], ...ALL_PATHS[family].filter((n) => SPECS[n]?.arch !== compiled.arch)]);
    for (const name of wanted) expect(seen.get(name), `${family} path ${name}`).toMatch(/^(ran|skipped)$/);
    // the host's own best paths must not hide among the skipped ones
    for (const c of isaCases(family)) if (c.run) expect(seen.get(c.name), `${family} path ${c.name}`).toBe("ran");
  });
}
