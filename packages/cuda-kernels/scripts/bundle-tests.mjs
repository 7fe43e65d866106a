#!/usr/bin/env node
// Bundles a file that imports vitest test files into one ESM file that plain Node runs (no vitest, no
// node_modules): esbuild with the "@qlora/source" condition, `vitest` aliased to dev/vitest-shim.ts.
// Used by scripts/gpu-bundle.mjs, and as a CLI by test/vitest-shim.test.ts: bundles the given test files
// with dev/gpu-tests/run.ts, which runs them and prints one line per test and the counts.
//   node scripts/bundle-tests.mjs <out.mjs> <file.test.ts>...
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(pkg, "..", "..");

// esbuild and @vitest/* are not dependencies of this package: reach them through tsup and vitest,
// which the workspace root already depends on (no new dependency, same versions as the lockfile).
const rootRequire = createRequire(join(repo, "package.json"));
export const esbuild = createRequire(rootRequire.resolve("tsup"))("esbuild");
const vitestRequire = createRequire(rootRequire.resolve("vitest/package.json"));

/** vitest → the shim; @vitest/expect and @vitest/spy from vitest's own dependencies. */
const resolvePlugin = {
  name: "qlora-vitest-shim",
  setup(build) {
    build.onResolve({ filter: /^vitest$/ }, () => ({ path: join(pkg, "dev", "vitest-shim.ts") }));
    build.onResolve({ filter: /^@vitest\/(expect|spy)$/ }, (args) => ({ path: vitestRequire.resolve(args.path) }));
  },
};

/** Resolves to esbuild's result ({ errors, warnings }); `entry` is a file path or { contents } (an entry written here). */
export function bundleTests(entry, outfile, { sourcemap = false } = {}) {
  return esbuild.build({
    ...(typeof entry === "string"
      ? { entryPoints: [entry] }
      : { stdin: { ...entry, resolveDir: pkg, sourcefile: "bundle-entry.ts", loader: "ts" } }),
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    conditions: ["@qlora/source"],
    // Test files are imported for their side effects (they register tests) from packages that declare
    // "sideEffects": false; run every module as vitest would, without tree-shaking hints.
    ignoreAnnotations: true,
    sourcemap,
    legalComments: "none",
    logLevel: "warning",
    // CommonJS dependencies call require(); give the ESM bundle a real one.
    banner: {
      js: 'import { createRequire as __qloraCreateRequire } from "node:module"; const require = __qloraCreateRequire(import.meta.url);',
    },
    plugins: [resolvePlugin],
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [outfile, ...files] = process.argv.slice(2);
  if (!outfile || files.length === 0) {
    console.error("usage: node scripts/bundle-tests.mjs <out.mjs> <file.test.ts>...");
    process.exit(2);
  }
  const contents = [
    ...files.map((f) => `import ${JSON.stringify(resolve(f))};`),
    `import { runBundledTests } from ${JSON.stringify(join(pkg, "dev", "gpu-tests", "run.ts"))};`,
    `await runBundledTests(${JSON.stringify(files.join(" "))}, false);`,
  ].join("\n");
  const r = await bundleTests({ contents }, resolve(outfile));
  process.exit(r.errors.length + r.warnings.length > 0 ? 1 : 0);
}
