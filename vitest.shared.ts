import { defineConfig } from "vitest/config";

// Tests run against sources: the "@qlora/source" export condition points each workspace
// package at its src/index.ts, so no build is needed before `vitest`.
const conditions = ["@qlora/source", "module", "node", "import", "default"];

export function packageConfig(name: string) {
  return defineConfig({
    resolve: { conditions },
    ssr: { resolve: { conditions, externalConditions: ["@qlora/source"] } },
    test: {
      name,
      include: ["src/**/*.test.ts", "test/**/*.test.ts"],
      testTimeout: 60_000,
      hookTimeout: 120_000,
    },
  });
}
