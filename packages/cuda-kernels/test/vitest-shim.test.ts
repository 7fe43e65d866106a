// The GPU bundle runs test files under dev/vitest-shim.ts instead of vitest (scripts/gpu-bundle.mjs):
// this bundles test/shim-control.ts the same way and checks, under plain Node, that failing assertions
// fail (the real @vitest/expect matchers), hooks run in vitest's order, .each/.skipIf titles and counts.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const dir = mkdtempSync(join(tmpdir(), "qlora-shim-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("dev/vitest-shim.ts through scripts/bundle-tests.mjs", () => {
  it("reports each control test's outcome, hook order and the counts", () => {
    const out = join(dir, "control.mjs");
    const built = spawnSync(
      process.execPath,
      [join(pkg, "scripts", "bundle-tests.mjs"), out, join(pkg, "test", "shim-control.ts")],
      {
        encoding: "utf8",
      },
    );
    expect(built.stderr).toBe("");
    expect(built.status).toBe(0);
    const run = spawnSync(process.execPath, [out], { encoding: "utf8" });
    expect(run.status).toBe(1); // failures set the exit code
    const lines = run.stdout.split("\n");
    const outcome = (prefix: string) =>
      lines.filter((l) => l.startsWith(prefix)).map((l) => l.replace(/ \(\d+ ms\)$/, ""));
    expect(outcome("ok   ")).toEqual([
      "ok   outer > pass: deep equality",
      "ok   outer > pass: each 1 + 1 = 2",
      "ok   outer > pass: each 3 + 1 = 4",
    ]);
    expect(outcome("FAIL ")).toHaveLength(6);
    for (const l of outcome("FAIL ")) expect(l).toMatch(/^FAIL outer > fail: /);
    expect(outcome("skip ")).toEqual([
      "skip outer > skip: skipIf(true)",
      "skip outer > skipped suite > skip: inside a skipped suite",
    ]);
    expect(run.stdout).toContain("AssertionError: expected 1 to be 2");
    expect(run.stdout).toContain("AssertionError: grad.x: expected 0.5 to be less than or equal to 0.00001");
    expect(run.stdout).toContain('expected "vi.fn()" to be called 1 times, but got 2 times');
    expect(run.stdout).toContain("Error: late");
    expect(run.stdout).toContain(`hooks: beforeAll,${"beforeEach,afterEach,".repeat(9)}afterAll`);
    expect(run.stdout).toMatch(/: 3 passed, 6 failed, 2 skipped in [\d.]+ s\n/);
  });
});
