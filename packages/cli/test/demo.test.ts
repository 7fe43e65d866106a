import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openGguf } from "@qlora/formats";
import { describe, expect, it } from "vitest";
import { selectDevice } from "../src/device";
import { runDemo } from "../src/demo/run";

describe("qlora demo (the embedded default)", () => {
  it("QLoRA teaches the Q/A format: held-out accuracy and loss clearly better after (60 steps here, 120 by default)", async () => {
    selectDevice("cpu", undefined);
    const out = mkdtempSync(join(tmpdir(), "qlora-demo-"));
    const lines: string[] = [];
    const r = await runDemo({ steps: 60, outputDir: out, quiet: true, print: (l) => lines.push(l) });
    // The base model knows the facts (pretraining) but has never seen the question format.
    expect(r.before.accuracy).toBeLessThanOrEqual(0.1);
    expect(r.after.accuracy).toBeGreaterThanOrEqual(0.5);
    expect(r.after.loss).toBeLessThan(r.before.loss / 4);
    expect(r.before.total).toBe(45);
    expect(lines.join("\n")).toMatch(
      /before fine-tuning: held-out accuracy .*\n.*\n(.|\n)*after fine-tuning: {2}held-out accuracy/,
    );
    const adapterConfig = JSON.parse(readFileSync(join(r.adapterDir, "adapter_config.json"), "utf8"));
    expect(adapterConfig).toMatchObject({ peft_type: "LORA", r: 16, lora_alpha: 32 });
    expect((await openGguf(r.ggufAdapter)).get("general.type")).toBe("adapter");
    expect(readFileSync(r.reportPath, "utf8")).toMatch(/<svg /);
  });
});
