import { defineConfig } from "tsup";

export default defineConfig({
  // node-worker is loaded by node.ts at run time (new URL("./node-worker.js", import.meta.url))
  entry: ["src/index.ts", "src/node.ts", "src/node-worker.ts"],
  format: ["esm"],
  dts: true,
  clean: true,
  sourcemap: true,
  target: "es2022",
});
