import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { LOCK_FILE, lockOutputDir } from "./output-lock";

describe("the output_dir lock", () => {
  it("a second run into a locked output_dir is refused, naming the owner; release frees it", () => {
    const dir = join(mkdtempSync(join(tmpdir(), "qlora-lock-")), "out");
    const release = lockOutputDir(dir);
    const owner = JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8"));
    expect(owner).toMatchObject({ pid: process.pid, host: hostname() });
    expect(() => lockOutputDir(dir)).toThrow(
      new RegExp(
        `^output_dir: ${dir} is in use by another qlora train \\(pid ${process.pid} on ${hostname()}, started `,
      ),
    );
    release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    lockOutputDir(dir)();
  });

  it("the lock of a run that died is taken over; one from another host is not", () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-lock-"));
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!; // exited: its pid names no process now
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: dead, host: hostname(), started: "then" }));
    const release = lockOutputDir(dir);
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")).pid).toBe(process.pid);
    release();
    writeFileSync(join(dir, LOCK_FILE), "{ half-writ");
    lockOutputDir(dir)();
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: dead, host: "elsewhere", started: "then" }));
    expect(() => lockOutputDir(dir)).toThrow(`(if no run is active there, delete ${join(dir, LOCK_FILE)})`);
  });

  it("a reused pid is not its old run: this process's own pid in a lock it does not hold, or another start time", () => {
    const dir = mkdtempSync(join(tmpdir(), "qlora-lock-"));
    // a container's entrypoint is pid 1 every time: the killed run's lock names the new run's own pid
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify({ pid: process.pid, host: hostname(), started: "then" }));
    lockOutputDir(dir)();
    // a live process (the test runner's parent) that started at another time than the lock says
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({ pid: process.ppid, host: hostname(), started: "then", procStart: "1" }),
    );
    lockOutputDir(dir)();
    // the same live process with its real start time still holds it
    const stat = readFileSync(`/proc/${process.ppid}/stat`, "utf8");
    const procStart = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({ pid: process.ppid, host: hostname(), started: "then", procStart }),
    );
    expect(() => lockOutputDir(dir)).toThrow(`is in use by another qlora train (pid ${process.ppid} on ${hostname()}`);
  });
});
