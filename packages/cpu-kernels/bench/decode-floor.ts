// Builds and runs bench/gemv_decode_floor.cc (x86-64 with AVX2 and g++ only): the time an exact AVX2 decode of
// packed NF4 codes into f32 weights takes on this CPU with no memory traffic and no FMAs, i.e. a floor under
// any exact 4-bit GEMV here. gemm.bench.ts prints what that floor means for the GEMV shapes and their peer.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface DecodeFloor {
  clock_ghz: number;
  /** Independent vpshufb and vfmadd231ps, alternating: instructions retired per cycle. */
  shuffle_fma_per_cycle: number;
  /** Best of 41 timings, nanoseconds per 64 weights (32 packed bytes), one thread, codes in L1. */
  ns_per_64_weights: { byte_planes: number; lookups_only: number; gather: number };
}

/** The measurement, or a string saying why it could not be taken here. */
export function measureDecodeFloor(): DecodeFloor | string {
  if (process.arch !== "x64") return `not x86-64 (${process.arch})`;
  const dir = mkdtempSync(join(tmpdir(), "qlora-decode-floor-"));
  try {
    const exe = join(dir, "floor");
    const here = dirname(fileURLToPath(import.meta.url));
    const src = join(here, "gemv_decode_floor.cc");
    try {
      const flags = ["-O3", "-std=c++17", "-mavx2", "-mfma", `-I${join(here, "..", "csrc")}`];
      execFileSync("g++", [...flags, src, "-o", exe], { stdio: "pipe" });
    } catch (e) {
      return `g++ could not build ${src}: ${(e as Error).message.split("\n")[0]}`;
    }
    return JSON.parse(execFileSync(exe, { encoding: "utf8" }).trim()) as DecodeFloor;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
