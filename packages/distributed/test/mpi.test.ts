import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { DistributedError, launchCommand, rankLogger, referenceCollectives } from "../src/index";
import { ROOT } from "./helpers";

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
