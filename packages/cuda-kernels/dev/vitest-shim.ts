// A minimal stand-in for `vitest` so test files can run under plain Node (the GPU machine has no
// node_modules): scripts/gpu-bundle.mjs aliases `vitest` to this file when it bundles test files with
// esbuild. Collection works like vitest's: describe() callbacks run at import time and register tests;
// runTests() then runs them in order with their hooks. The assertions are the real ones: `expect` is
// built from @vitest/expect + chai exactly as vitest builds it (minus snapshots/poll), and `vi` is
// @vitest/spy. Only the API surface the bundled test files use is here; anything else throws on use.
import {
  ASYMMETRIC_MATCHERS_OBJECT,
  ChaiStyleAssertions,
  chai,
  type ExpectStatic,
  GLOBAL_EXPECT,
  getState,
  JestAsymmetricMatchers,
  JestChaiExpect,
  JestExtend,
  setState,
} from "@vitest/expect";
import { clearAllMocks, fn, isMockFunction, resetAllMocks, restoreAllMocks, spyOn } from "@vitest/spy";

type Body = () => unknown;
type Hook = () => unknown;

interface TestNode {
  readonly name: string;
  readonly body: Body;
  readonly skip: boolean;
}

interface Suite {
  readonly name: string;
  readonly parent?: Suite;
  readonly skip: boolean;
  readonly children: (Suite | TestNode)[];
  readonly beforeAll: Hook[];
  readonly afterAll: Hook[];
  readonly beforeEach: Hook[];
  readonly afterEach: Hook[];
}

const newSuite = (name: string, parent: Suite | undefined, skip: boolean): Suite => ({
  name, parent, skip, children: [], beforeAll: [], afterAll: [], beforeEach: [], afterEach: [],
});

const root = newSuite("", undefined, false);
let current = root;

// ------------------------------------------------------------------ expect (as vitest/dist builds it)

chai.use(JestExtend);
chai.use(JestChaiExpect);
chai.use(ChaiStyleAssertions);
chai.use(JestAsymmetricMatchers);

function createExpect(): ExpectStatic {
  const e = ((value: unknown, message?: string) => {
    const { assertionCalls } = getState(e);
    setState({ assertionCalls: assertionCalls + 1 }, e);
    return chai.expect(value, message);
  }) as unknown as ExpectStatic;
  Object.assign(e, chai.expect);
  Object.assign(e, (globalThis as Record<symbol, object>)[ASYMMETRIC_MATCHERS_OBJECT]);
  e.getState = () => getState(e);
  e.setState = (state) => setState(state, e);
  setState({ assertionCalls: 0, isExpectingAssertions: false, isExpectingAssertionsError: null,
    expectedAssertionsNumber: null, expectedAssertionsNumberErrorGen: null, currentTestName: "" }, e);
  return e;
}

export const expect = createExpect();
(globalThis as Record<symbol, unknown>)[GLOBAL_EXPECT] = expect;

export const vi = { fn, spyOn, isMockFunction, restoreAllMocks, resetAllMocks, clearAllMocks };

// ------------------------------------------------------------------ collection

function addSuite(name: string, body: Body, skip: boolean): void {
  const suite = newSuite(name, current, skip || current.skip);
  current.children.push(suite);
  const parent = current;
  current = suite;
  try {
    const r = body();
    if (r instanceof Promise) throw new Error(`describe("${name}"): async describe callbacks are not supported by the shim`);
  } finally {
    current = parent;
  }
}

function addTest(name: string, body: Body, skip: boolean): void {
  current.children.push({ name, body, skip: skip || current.skip });
}

/** vitest's printf-style titles for .each: %s %d %i %f %j %o %# %%. */
function formatTitle(title: string, args: unknown[], index: number): string {
  let i = 0;
  return title.replace(/%[sdifjo#%]/g, (m) => {
    if (m === "%%") return "%";
    if (m === "%#") return String(index);
    const v = args[i++];
    if (m === "%i") return String(Math.trunc(Number(v)));
    if (m === "%d" || m === "%f") return String(Number(v));
    if (m === "%j" || m === "%o") return JSON.stringify(v);
    return String(v);
  });
}

function each(register: (name: string, body: Body) => void) {
  return (table: readonly unknown[]) => (title: string, body: (...args: unknown[]) => unknown) => {
    table.forEach((row, index) => {
      const args = Array.isArray(row) ? row : [row];
      register(formatTitle(title, args, index), () => body(...args));
    });
  };
}

const unsupported = (what: string) => () => {
  throw new Error(`vitest-shim: ${what} is not implemented (extend dev/vitest-shim.ts)`);
};

type TestFn = ((name: string, body: Body, timeout?: number) => void) & {
  skip: (name: string, body?: Body) => void;
  skipIf: (cond: unknown) => (name: string, body: Body) => void;
  runIf: (cond: unknown) => (name: string, body: Body) => void;
  each: (table: readonly unknown[]) => (title: string, body: (...args: never[]) => unknown) => void;
  todo: (name: string) => void;
  only: () => never;
  concurrent: () => never;
};

function makeTestFn(register: (name: string, body: Body, skip: boolean) => void): TestFn {
  const t = ((name: string, body: Body) => register(name, body, false)) as TestFn;
  t.skip = (name, body = () => {}) => register(name, body, true);
  t.skipIf = (cond) => (name, body) => register(name, body, Boolean(cond));
  t.runIf = (cond) => (name, body) => register(name, body, !cond);
  t.each = each((name, body) => register(name, body, false)) as TestFn["each"];
  t.todo = (name) => register(`${name} (todo)`, () => {}, true);
  t.only = unsupported(".only");
  t.concurrent = unsupported(".concurrent");
  return t;
}

export const it = makeTestFn(addTest);
export const test = it;
export const describe = makeTestFn(addSuite);
export const suite = describe;

export const beforeAll = (hook: Hook) => void current.beforeAll.push(hook);
export const afterAll = (hook: Hook) => void current.afterAll.push(hook);
export const beforeEach = (hook: Hook) => void current.beforeEach.push(hook);
export const afterEach = (hook: Hook) => void current.afterEach.push(hook);

// ------------------------------------------------------------------ running

export interface RunSummary {
  passed: number;
  failed: number;
  skipped: number;
  failures: string[];
}

const isSuite = (n: Suite | TestNode): n is Suite => "children" in n;
const hasRunnable = (s: Suite): boolean => s.children.some((c) => (isSuite(c) ? hasRunnable(c) : !c.skip));
const pathOf = (s: Suite | undefined): string[] => (s?.parent ? [...pathOf(s.parent), s.name] : []);

function errorText(e: unknown): string {
  if (e instanceof Error) {
    const where = (e.stack ?? "").split("\n").find((l) => /\.test\.ts|testing\//.test(l)) ?? "";
    return `${e.name}: ${e.message}${where ? `\n      ${where.trim()}` : ""}`;
  }
  return String(e);
}

async function runHooks(hooks: Hook[]): Promise<void> {
  for (const h of hooks) await h();
}

function eachHooks(s: Suite, kind: "beforeEach" | "afterEach"): Hook[] {
  const chain: Suite[] = [];
  for (let p: Suite | undefined = s; p; p = p.parent) chain.unshift(p);
  const hooks = chain.flatMap((p) => p[kind]);
  return kind === "afterEach" ? hooks.reverse() : hooks;
}

async function runTest(t: TestNode, s: Suite, out: RunSummary, log: (line: string) => void): Promise<void> {
  const name = [...pathOf(s), t.name].join(" > ");
  if (t.skip) {
    out.skipped++;
    log(`skip ${name}`);
    return;
  }
  const started = performance.now();
  let error: unknown;
  try {
    await runHooks(eachHooks(s, "beforeEach"));
    await t.body();
  } catch (e) {
    error = e;
  }
  try {
    await runHooks(eachHooks(s, "afterEach"));
  } catch (e) {
    error ??= e;
  }
  const ms = (performance.now() - started).toFixed(0);
  if (error === undefined) {
    out.passed++;
    log(`ok   ${name} (${ms} ms)`);
  } else {
    out.failed++;
    out.failures.push(name);
    log(`FAIL ${name} (${ms} ms)\n      ${errorText(error)}`);
  }
}

async function runSuite(s: Suite, out: RunSummary, log: (line: string) => void, filter?: string): Promise<void> {
  if (s.parent && s.skip && s.children.length === 0) {
    log(`skip ${pathOf(s).join(" > ")} (no tests collected)`); // vitest counts no test here either
    return;
  }
  const runnable = hasRunnable(s);
  try {
    if (runnable) await runHooks(s.beforeAll);
  } catch (e) {
    // vitest fails every test of the suite when its beforeAll throws
    const name = pathOf(s).join(" > ");
    out.failed++;
    out.failures.push(`${name} (beforeAll)`);
    log(`FAIL ${name} > beforeAll\n      ${errorText(e)}`);
    return;
  }
  for (const c of s.children) {
    if (isSuite(c)) await runSuite(c, out, log, filter);
    else if (!filter || [...pathOf(s), c.name].join(" > ").includes(filter)) await runTest(c, s, out, log);
  }
  try {
    if (runnable) await runHooks(s.afterAll);
  } catch (e) {
    out.failed++;
    out.failures.push(`${pathOf(s).join(" > ")} (afterAll)`);
    log(`FAIL ${pathOf(s).join(" > ")} > afterAll\n      ${errorText(e)}`);
  }
}

/** Runs every collected test; `filter` keeps tests whose full name contains it. */
export async function runTests(filter?: string, log: (line: string) => void = console.log): Promise<RunSummary> {
  const out: RunSummary = { passed: 0, failed: 0, skipped: 0, failures: [] };
  await runSuite(root, out, log, filter);
  return out;
}
