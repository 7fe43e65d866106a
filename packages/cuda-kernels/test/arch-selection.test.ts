// Which CUDA architectures a build compiles for (scripts/cuda-toolchain.mjs): a fresh clone on a machine
// without an NVIDIA driver compiles one architecture (proof that the kernels compile), a machine with a
// driver compiles for its GPU, and only prebuilds (or QLORA_CUDA_ARCHS=all) compile every architecture.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
// @ts-expect-error -- plain ESM build script without type declarations
import { ALL_ARCHS, detectGpuArchs, gencodeFromEnv, PROOF_ARCH } from "../scripts/cuda-toolchain.mjs";

type Pick = { archs?: string[]; gencode?: string; reason?: string; error?: string };
const pick = (o: object): Pick => gencodeFromEnv(o) as Pick;

describe("gencodeFromEnv", () => {
  let saved: string | undefined;
  beforeEach(() => {
    saved = process.env.QLORA_CUDA_ARCHS;
    delete process.env.QLORA_CUDA_ARCHS;
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.QLORA_CUDA_ARCHS;
    else process.env.QLORA_CUDA_ARCHS = saved;
  });

  it("without a driver: one architecture, SASS + PTX", () => {
    const r = pick({ detect: () => [] });
    expect(r.archs).toEqual([PROOF_ARCH]);
    expect(r.gencode).toBe(`-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_80,code=compute_80`);
    expect(r.reason).toMatch(/no NVIDIA driver/);
  });

  it("with a driver: the installed GPUs' architectures; older than sm_80 falls back to sm_80", () => {
    expect(pick({ detect: () => ["90"] }).archs).toEqual(["90"]);
    expect(pick({ detect: () => ["86", "90"] }).archs).toEqual(["86", "90"]);
    const old = pick({ detect: () => ["75"] });
    expect(old.archs).toEqual(["80"]);
    expect(old.reason).toMatch(/older than sm_80/);
  });

  it("every architecture only for prebuilds or when asked (QLORA_CUDA_ARCHS=all)", () => {
    expect(pick({ defaultAll: true, detect: () => ["90"] }).archs).toEqual(ALL_ARCHS);
    process.env.QLORA_CUDA_ARCHS = "all";
    expect(pick({ detect: () => [] }).archs).toEqual(ALL_ARCHS);
    expect(ALL_ARCHS).toEqual(["80", "86", "89", "90"]);
  });

  it("an explicit list wins over detection and is validated", () => {
    process.env.QLORA_CUDA_ARCHS = "89, 90";
    expect(pick({ detect: () => ["80"], defaultAll: true }).archs).toEqual(["89", "90"]);
    process.env.QLORA_CUDA_ARCHS = "80,hopper";
    expect(pick({}).error).toContain('QLORA_CUDA_ARCHS entry "hopper"');
  });

  it("detection never throws and finds no GPU on a machine without nvidia-smi or libcuda", () => {
    const archs = detectGpuArchs(undefined) as string[];
    expect(Array.isArray(archs)).toBe(true);
    for (const a of archs) expect(a).toMatch(/^\d{2,3}$/);
  });
});
