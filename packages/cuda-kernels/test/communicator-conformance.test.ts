// The NCCL communicator implements @qlora/distributed's Communicator structurally (this package does not depend on
// @qlora/distributed at run time; the import below is type-only). The type checker (`pnpm typecheck`, in CI) fails
// on `conforms` if NcclCommunicator stops being assignable to Communicator; the test checks the same methods exist
// at run time with the interface's parameter counts.
import type { Communicator } from "@qlora/distributed";
import { describe, expect, it } from "vitest";
import { NcclCommunicator } from "../src/nccl";

type Conforms = NcclCommunicator extends Communicator ? true : false;
const conforms: Conforms = true;

describe("NcclCommunicator and @qlora/distributed's Communicator", () => {
  it("is assignable to Communicator (type check) and has its methods (run time)", () => {
    expect(conforms).toBe(true);
    const arity: Record<string, number> = {
      allReduce: 2,
      allGather: 1,
      reduceScatter: 2,
      broadcast: 2,
      barrier: 0,
      progress: 0,
      abort: 1,
      close: 0,
    };
    for (const [name, n] of Object.entries(arity)) {
      const fn = (NcclCommunicator.prototype as unknown as Record<string, unknown>)[name];
      expect(typeof fn, name).toBe("function");
      expect((fn as (...a: unknown[]) => unknown).length, name).toBe(n);
    }
  });
});
