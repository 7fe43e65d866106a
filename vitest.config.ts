import { defineConfig } from "vitest/config";

// One root run over every package; each package's own vitest.config.ts is a project.
export default defineConfig({
  test: {
    projects: ["packages/*"],
  },
});
