import { defineConfig } from "tsup";

export default defineConfig({
  // bin.ts is the `qlora` executable (package.json "bin"); its #!/usr/bin/env node line is kept by esbuild
  entry: ["src/index.ts", "src/bin.ts"],
  format: ["esm"],
  dts: true,
  clean: true,
  sourcemap: true,
  target: "es2022",
});
