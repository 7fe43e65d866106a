/**
 * packages/cli/examples/qlora.yaml is the config a new user copies: it must parse, and every "default X" its
 * comments state must be the schema's default, so the file cannot drift from src/config.ts.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import YAML from "yaml";
import { parseTrainConfig } from "./config";

const file = new URL("../examples/qlora.yaml", import.meta.url);
const text = readFileSync(file, "utf8");

describe("examples/qlora.yaml", () => {
  it("parses as a train config with the demo model and data", () => {
    const c = parseTrainConfig(text, "qlora.yaml");
    expect(c).toMatchObject({ base_model: "packages/cli/demo/base", adapter: "qlora", load_in_4bit: true });
    expect(c.datasets[0]).toMatchObject({ path: "packages/cli/demo/task/train.jsonl", type: "prompt_completion" });
  });

  it('every "default X" in its comments is the default the schema fills in', () => {
    const defaults = parseTrainConfig("base_model: m\ndatasets: [{path: d.jsonl}]\n", "minimal.yaml") as Record<
      string,
      unknown
    >;
    const claims = [...text.matchAll(/^(\w+):[^#\n]*#\s*default (?!:)([^\s:;,(]+)/gm)].map(([, key, value]) => ({
      key,
      value,
    }));
    expect(claims.length).toBeGreaterThan(15);
    for (const { key, value } of claims) expect(defaults[key], key).toEqual(YAML.parse(value));
  });
});
