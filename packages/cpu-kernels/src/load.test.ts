import { expect, test } from "vitest";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildHint, CpuKernelsLoadError, loadNative } from "./load";

test("the native addon loads and reports the ISA it dispatches to", () => {
  const native = loadNative() as unknown as { isaInfo(): { avx2: boolean }; getThreads(): number };
  expect(typeof native.isaInfo().avx2).toBe("boolean");
  expect(native.getThreads()).toBeGreaterThanOrEqual(1);
});

test("the load error tells a workspace user and an npm user each how to get a binary", () => {
  const root = mkdtempSync(join(tmpdir(), "qlora-load-hint-"));
  try {
    const installed = join(root, "app", "node_modules", "@qlora", "cpu-kernels");
    mkdirSync(installed, { recursive: true });
    const npmHint = new CpuKernelsLoadError("no native build was found", installed).message;
    expect(npmHint).toContain("no native build was found");
    expect(npmHint).toContain(`this is ${process.platform}-${process.arch}`);
    expect(npmHint).toContain(`\`npx node-gyp rebuild\` in ${installed}`);
    expect(npmHint).not.toContain("pnpm");

    const workspace = join(root, "repo");
    mkdirSync(join(workspace, "packages", "cpu-kernels"), { recursive: true });
    writeFileSync(join(workspace, "pnpm-workspace.yaml"), "packages: [packages/*]\n");
    expect(buildHint(join(workspace, "packages", "cpu-kernels"))).toContain(
      "`pnpm --filter @qlora/cpu-kernels build:native`",
    );
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
