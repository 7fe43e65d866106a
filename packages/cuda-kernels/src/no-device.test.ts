// Behaviour on a machine without a usable GPU (CI, and the machine this package was written on):
// typed error with the runtime's reason, no registration, one warning, no crash in the native layer.
import { availableBackends } from "@qlora/tensor";
import { afterEach, describe, expect, it, vi } from "vitest";
import { CudaUnavailableError, createCudaBackend, cudaDeviceStatus, registerCudaBackend } from "./index";
import { tryLoadNative } from "./native";

const status = cudaDeviceStatus();

describe.skipIf(status.available)(
  `without a usable CUDA device (${status.available ? "device present" : status.reason})`,
  () => {
    afterEach(() => vi.restoreAllMocks());

    it("cudaDeviceStatus reports the reason instead of throwing", () => {
      expect(status.available).toBe(false);
      expect(status.reason.length).toBeGreaterThan(0);
      if (status.addonLoaded && status.device?.driverVersion === 0) {
        // No driver at all: cudart's own words for error 35 (toolchain notes §3).
        expect(status.code).toBe(35);
        expect(status.reason).toBe("CUDA driver version is insufficient for CUDA runtime version");
      }
    });

    it("createCudaBackend throws CudaUnavailableError carrying that reason", () => {
      let caught: unknown;
      try {
        createCudaBackend();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(CudaUnavailableError);
      const err = caught as CudaUnavailableError;
      expect(err.code).toBe("CUDA_UNAVAILABLE");
      expect(err.reason).toBe(status.reason);
      expect(err.cudaCode).toBe(status.code);
      expect(err.message).toBe(`no CUDA device: ${status.reason}`);
    });

    it("registerCudaBackend registers nothing, returns the reason and warns once", () => {
      const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
      const first = registerCudaBackend();
      const second = registerCudaBackend();
      expect(first).toEqual({ registered: false, reason: status.reason });
      expect(second).toEqual({ registered: false, reason: status.reason });
      expect(warn).toHaveBeenCalledTimes(1);
      expect(String(warn.mock.calls[0][0])).toContain(status.reason);
      expect(availableBackends().map((b) => b.name)).not.toContain("cuda");
    });

    it.skipIf(!status.addonLoaded)("the native layer turns CUDA failures and bad handles into JS errors", () => {
      const native = tryLoadNative().native!;
      let cudaErr: unknown;
      try {
        native.alloc(1024);
      } catch (e) {
        cudaErr = e;
      }
      expect(cudaErr).toBeInstanceOf(Error);
      expect((cudaErr as Error).message).toContain(status.reason);
      expect((cudaErr as { cudaCode?: number }).cudaCode).toBe(status.code);
      // Argument validation happens before any CUDA call: unknown handles, bad dtypes, bad integers.
      expect(() => native.fill(12345, 0, 4, 1)).toThrow(RangeError);
      expect(() => native.fill(12345, 9, 4, 1)).toThrow(/dtype/);
      expect(() => native.unary(99, 1, 2, 3)).toThrow(RangeError);
      expect(() => native.free(777)).toThrow(/unknown or already freed/);
      expect(() => (native.gemm as (...a: unknown[]) => void)("x")).toThrow(RangeError);
    });

    it.skipIf(!status.addonLoaded)("the addon exports every op the backend calls", () => {
      const native = tryLoadNative().native! as unknown as Record<string, unknown>;
      for (const fn of [
        "deviceStatus",
        "cublasInfo",
        "alloc",
        "free",
        "upload",
        "download",
        "prefetch",
        "memoryStats",
        "resetPeak",
        "emptyCache",
        "synchronize",
        "fill",
        "copy",
        "copyInPlace",
        "unary",
        "binary",
        "reduce",
        "gemm",
        "quantize4bit",
        "dequantize4bit",
        "quantizeBlockwise8",
        "gemm4bit",
        "gemm4bitInputGrad",
        "gemm4bitF32",
        "rmsNorm",
        "rmsNormBackward",
        "rope",
        "swiglu",
        "swigluBackward",
        "softmax",
        "softmaxBackward",
        "crossEntropy",
        "crossEntropyBackward",
        "embedding",
        "embeddingBackward",
        "adamw",
        "adamw8bit",
        "attention",
        "attentionBackward",
        "attentionUseTc",
        "attentionTcScratchBytes",
        "attentionTc",
        "attentionBackwardTc",
      ]) {
        expect(typeof native[fn], fn).toBe("function");
      }
      // Without a device the tensor-core attention is never selected (and asking does not throw).
      expect((native.attentionUseTc as (...a: unknown[]) => boolean)(1, 4, 2, 37, 64, true)).toBe(false);
    });
  },
);
