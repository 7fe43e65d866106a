import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { DistributedError, launchCommand, rankLogger, referenceCollectives } from "../src/index";
import { ROOT, mpirun, noMpi, runRanks } from "./helpers";

describe("MPI communicator without a job", () => {
  it("a missing MPI library is a typed error naming the library", () => {
    const code = `import("@qlora/distributed").then(({ MpiCommunicator }) => {
      try { new MpiCommunicator(); } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }
    })`;
    const r = spawnSync(process.execPath, ["--import", "tsx", "--conditions=@qlora/source", "-e", code], {
      cwd: `${ROOT}/packages/distributed`,
      env: { ...process.env, QLORA_MPI_LIBRARY: "libmpi-not-here.so.7" },
      encoding: "utf8",
    });
    const out = JSON.parse(r.stdout.trim());
    expect(out.name).toBe("DistributedError");
    expect(out.code).toBe("MPI_UNAVAILABLE");
    expect(out.message).toMatch(/cannot load the MPI library libmpi-not-here\.so\.7.*openmpi-bin/);
  });

  it("launch arguments are checked and the mpirun line is what a user would type", () => {
    expect(() => launchCommand({ nproc: 0, argv: ["x.js"] })).toThrow(DistributedError);
    expect(() => launchCommand({ nproc: 2, argv: [] })).toThrow(/argv must name the script/);
    const { command, args } = launchCommand({
      nproc: 3,
      argv: ["train.js", "--x"],
      mpirun: "/opt/mpirun",
      node: "node",
    });
    expect(command).toBe("/opt/mpirun");
    expect(args.slice(0, 3)).toEqual(["-n", "3", "--oversubscribe"]);
    expect(args.slice(-3)).toEqual(["node", "train.js", "--x"]);
    expect(args).toContain("OMPI_MCA_mpi_yield_when_idle=1");
  });

  it("rank-aware logging: info on rank 0 only, warnings and errors on every rank with the rank", () => {
    const lines: string[] = [];
    const out = { log: (s: string) => lines.push(`out:${s}`), error: (s: string) => lines.push(`err:${s}`) };
    rankLogger(1, 3, out).info("progress");
    rankLogger(0, 3, out).info("progress");
    rankLogger(2, 3, out).error("boom");
    expect(lines).toEqual(["out:progress", "err:[rank 2/3] error: boom"]);
  });

  it("the reference collectives follow their definitions", () => {
    const parts = [Float64Array.of(1, 5, -2, 4), Float64Array.of(3, -1, 7, 0)];
    expect([...referenceCollectives.allReduce(parts, "sum")]).toEqual([4, 4, 5, 4]);
    expect([...referenceCollectives.allReduce(parts, "avg")]).toEqual([2, 2, 2.5, 2]);
    expect([...referenceCollectives.allReduce(parts, "max")]).toEqual([3, 5, 7, 4]);
    expect([...referenceCollectives.reduceScatter(parts, "min", 1)]).toEqual([-2, 0]);
    expect([...referenceCollectives.allGather(parts)]).toEqual([1, 5, -2, 4, 3, -1, 7, 0]);
  });
});

describe(`MPI collectives under mpirun${noMpi}`, () => {
  for (const n of [2, 3])
    it.skipIf(!mpirun.ok)(`-n ${n}: every collective, f32/f64/i32, odd sizes, against its definition`, async () => {
      const r = await runRanks(n, "collectives.ts");
      expect(r.exitCode, r.stderr).toBe(0);
      const res = JSON.parse(r.stdout.trim().split("\n").at(-1) as string);
      expect(res.worldSize).toBe(n);
      expect(res.failures).toEqual([]);
      expect(res.failuresPerRank).toEqual(Array(n).fill(0));
      expect(res.cases).toBeGreaterThan(100);
    });

  it.skipIf(!mpirun.ok)("a killed rank ends every other rank (no hang), with a message", async () => {
    const r = await runRanks(3, "failure.ts", ["kill"], { TEST_TIMEOUT_MS: "5000" });
    expect(r.exitCode).not.toBe(0);
    expect(r.seconds).toBeLessThan(40);
    expect(`${r.stdout}${r.stderr}`).toMatch(/signal 9|Killed|killed|rank 1/i);
  });

  it.skipIf(!mpirun.ok)("a silent rank makes its peers' collective time out and the job end", async () => {
    const r = await runRanks(2, "failure.ts", ["stall"], { TEST_TIMEOUT_MS: "2000" });
    expect(r.exitCode).not.toBe(0);
    expect(r.seconds).toBeLessThan(40);
    expect(r.stderr).toMatch(
      /\[rank 0\/2\] error: DistributedError TIMEOUT: allReduce on rank 0 of 2: peers did not arrive within 2000 ms/,
    );
  });
});
