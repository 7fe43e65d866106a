import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

// The modules form an import cycle (tensor ↔ ops ↔ autograd ↔ grad-rules); every entry order must load.
describe("module entry order", () => {
  const root = fileURLToPath(new URL("..", import.meta.url));
  for (const entry of ["src/ops.ts", "src/grad-rules.ts", "src/autograd.ts"]) {
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
