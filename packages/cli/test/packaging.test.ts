/**
 * Packaging: the packed tarballs install with plain npm in an empty project outside the workspace, with no
 * compiler on PATH, and work there (prebuilt addon, `@qlora/nf4` import, `npx qlora ...`). The work is done by
 * scripts/pack-check.mjs (also runnable by hand); this test runs it and requires every check to pass.
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const SCRIPT = fileURLToPath(new URL("../../../scripts/pack-check.mjs", import.meta.url));
const skip = process.env.QLORA_SKIP_PACK_CHECK === "1";

function runPackCheck(): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [SCRIPT], { timeout: 1_140_000, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
      resolve({ code, output: `${stdout}\n${stderr}` });
    });
  });
}

describe("packaging (scripts/pack-check.mjs)", () => {
  it.skipIf(skip)(
    "pnpm -r pack tarballs install with npm and no compiler; prebuilt addon, nf4 import and npx qlora work (skipped when QLORA_SKIP_PACK_CHECK=1)",
    async () => {
      const { code, output } = await runPackCheck();
      const lines = output.split("\n").filter((l) => l.startsWith("pack-check"));
      expect(
        lines.filter((l) => /: FAIL /.test(l)),
        output,
      ).toEqual([]);
      for (const name of [
        "no compiler on the install PATH",
        "npm install of the tarballs",
        "@qlora/cpu-kernels loads its prebuilt binary",
        'import { quantize4bit } from "@qlora/nf4"',
        "TypeScript: every package's types resolve",
        "npx qlora --help",
        "qlora estimate",
        "qlora inspect <model.safetensors>",
        "qlora generate (NF4 load, cpu backend)",
        "qlora inspect <missing path>",
      ]) {
        expect(
          lines.some((l) => l.includes(`PASS ${name}`)),
          `no PASS line for "${name}":\n${output}`,
        ).toBe(true);
      }
      expect(code, output).toBe(0);
      expect(lines.at(-1)).toBe("pack-check: PASS");
    },
    // builds every package (tsup, and the addon when no fresh binary exists) before installing; on a loaded
    // 2-core machine the cold run took minutes
    1_200_000,
  );
});
