// The composed `cpu` backend: the @qlora/tensor parity harness (every op vs the reference backend),
// shared host memory accounting, registry integration, and the loader fallback (never a crash,
// exactly one warning carrying node-gyp-build's reason).
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { quantize4bit } from "@qlora/nf4";
import { type Backend, type HostBuffer, getBackend, referenceBackend, unregisterBackend } from "@qlora/tensor";
import { backendParitySuite } from "@qlora/tensor/testing";
import { describe, expect, test, vi } from "vitest";
import { COMPUTE_OPS, cpuBackend, cpuBackendInfo, createCpuBackend, registerCpuBackend } from "../src/backend";
import { getThreads, setThreads } from "../src/threads";
import { quantBuffers, randomF32, worstRatio } from "./oracle";

const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

// One parity body per available backend: the cpu backend (native when the addon loaded).
backendParitySuite(cpuBackend, { seeds: [1, 2] });

describe("cpu backend composition", () => {
  test("is native, named cpu on device cpu, and serves the GEMM family natively", () => {
    const info = cpuBackendInfo(cpuBackend)!;
    expect(info.native).toBe(true);
    expect(cpuBackend.name).toBe("cpu");
    expect(cpuBackend.device).toBe("cpu");
    expect(info.nativeOps).toEqual(expect.arrayContaining(["matmul", "matmul4bit", "matmul4bitInputGrad"]));
    // every compute op is either native or explicitly delegated, never missing
    expect([...info.nativeOps, ...info.delegatedOps].sort()).toEqual([...COMPUTE_OPS].sort());
    for (const op of COMPUTE_OPS) expect(typeof cpuBackend[op]).toBe("function");
  });

  test("allocates through the reference host allocator (one set of memory counters)", () => {
    const before = referenceBackend.memoryStats().currentBytes;
    const a = cpuBackend.fromHost(randomF32(6, 1), "f32"),
      b = cpuBackend.fromHost(randomF32(6, 2), "f32");
    const y = cpuBackend.matmul(a, b, { batch: 1, m: 2, k: 3, n: 2 });
    expect(referenceBackend.memoryStats().currentBytes - before).toBe(4 * (6 + 6 + 4));
    for (const buf of [a, b, y]) cpuBackend.free(buf);
    expect(referenceBackend.memoryStats().currentBytes).toBe(before);
  });

  test("matmul4bit through the Backend API agrees with the reference at a GEMV and a GEMM size", () => {
    const [n, k] = [96, 256];
    const state = quantize4bit(randomF32(n * k, 3), { blocksize: 64, doubleQuant: true, shape: [n, k] });
    const wc = quantBuffers(cpuBackend, state),
      wr = quantBuffers(referenceBackend, state);
    for (const m of [1, 33]) {
      const x = cpuBackend.fromHost(randomF32(m * k, m), "f32");
      const got = cpuBackend.matmul4bit(x, wc, m) as HostBuffer,
        want = referenceBackend.matmul4bit(x, wr, m) as HostBuffer;
      expect(worstRatio(got.data, want.data, k)).toBeLessThanOrEqual(1);
    }
  });

  test("rejects non-host buffers and wrong dtypes with a CpuKernelsError naming the argument", () => {
    const a = cpuBackend.fromHost(new Int32Array(4), "i32"),
      b = cpuBackend.fromHost(new Float32Array(4), "f32");
    expect(() => cpuBackend.matmul(a, b, { batch: 1, m: 2, k: 2, n: 2 })).toThrow(
      /cpu\.matmul: a must be f32 or bf16, got i32/,
    );
    const device = { device: "cuda:0", dtype: "f32", length: 4 } as const;
    expect(() => cpuBackend.matmul(b, device, { batch: 1, m: 2, k: 2, n: 2 })).toThrow(/b must be a host buffer/);
  });

  test("registerCpuBackend makes cpu the default backend of @qlora/tensor", () => {
    expect(registerCpuBackend()).toBe(true);
    try {
      expect(getBackend().name).toBe("cpu");
    } finally {
      unregisterBackend("cpu");
    }
    expect(getBackend().name).toBe("reference");
  });

  test("setThreads/getThreads drive the native pool", () => {
    const before = getThreads();
    setThreads(1);
    expect(getThreads()).toBe(1);
    setThreads(before);
    expect(getThreads()).toBe(before);
    expect(() => setThreads(0)).toThrow(/an integer in \[1, 1024\], got 0/);
    // Far more threads than the OS grants used to abort the process from inside std::thread.
    expect(() => setThreads(100_000)).toThrow(/an integer in \[1, 1024\], got 100000/);
    expect(getThreads()).toBe(before);
  });
});

describe("loader fallback", () => {
  test("an injected failing loader yields the reference backend and one warning with the reason", () => {
    const warn = vi.fn();
    const backend: Backend = createCpuBackend({
      loader: () => {
        throw new Error("No native build was found (test)");
      },
      warn,
    });
    expect(backend).toBe(referenceBackend);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0]![0]).toMatch(/falling back to the reference backend: No native build was found \(test\)/);
    expect(cpuBackendInfo(backend)?.native).toBe(false);
  });

  test("a missing binary ($QLORA_CPU_KERNELS_PATH) in a child process: no crash (setThreads included), exactly one warning", () => {
    const script = [
      `import { cpuBackend, registerCpuBackend, createCpuBackend, setThreads, getThreads } from ${JSON.stringify(join(packageRoot, "src/index.ts"))};`,
      "const again = createCpuBackend();",
      "setThreads(2); // the fallback has no pool: sizing it is not an error",
      "console.log(JSON.stringify({ name: cpuBackend.name, again: again.name, registered: registerCpuBackend(), threads: getThreads() }));",
    ].join("\n");
    const child = spawnSync(
      process.execPath,
      ["--import", "tsx", "--conditions=@qlora/source", "--input-type=module", "-e", script],
      {
        cwd: packageRoot,
        env: { ...process.env, QLORA_CPU_KERNELS_PATH: join(packageRoot, "does-not-exist.node") },
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    expect(child.status, child.stderr).toBe(0);
    expect(JSON.parse(child.stdout.trim())).toEqual({
      name: "reference",
      again: "reference",
      registered: false,
      threads: 1,
    });
    const warnings = child.stderr.match(/QLORA_CPU_KERNELS_FALLBACK/g) ?? [];
    expect(warnings).toHaveLength(1);
    expect(child.stderr).toMatch(/Cannot find module .*does-not-exist\.node/);
  });
});
