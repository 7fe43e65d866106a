// Shared tail of the bundled test entries: runs what the imported test files registered, prints one
// line per test and "N passed, N failed, N skipped", and sets the exit code (1 on any failure, 3 when
// nothing ran at all, so an empty bundle cannot look green). argv[2] filters by substring of the name.
import { runTests } from "../vitest-shim";

export async function runBundledTests(title: string, expectSomeRun: boolean): Promise<void> {
  const filter = process.argv[2];
  console.log(`== ${title} (node ${process.version}${filter ? `, filter "${filter}"` : ""})`);
  const started = performance.now();
  const r = await runTests(filter);
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(`${title}: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped in ${seconds} s`);
  for (const f of r.failures) console.log(`  failed: ${f}`);
  if (r.failed > 0) process.exitCode = 1;
  else if (expectSomeRun && r.passed === 0) process.exitCode = 3;
}
