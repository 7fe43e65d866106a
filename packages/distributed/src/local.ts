/** A world of one process: every collective is the identity. For single-process runs and tests of strategies. */
import {
  type CommArray,
  type CommHandle,
  type CommReduceOp,
  type Communicator,
  checkArray,
  checkOp,
} from "./communicator";
import { DistributedError } from "./errors";

const done = <T>(v: T): CommHandle<T> => ({ done: Promise.resolve(v) });

export class LocalCommunicator implements Communicator {
  readonly rank = 0;
  readonly worldSize = 1;
  readonly timeoutMs = Number.POSITIVE_INFINITY;
  allReduce(data: CommArray, op: CommReduceOp): CommHandle {
    checkArray("allReduce", data);
    checkOp("allReduce", data, op);
    return done(undefined);
  }
  allGather<T extends CommArray>(data: T): CommHandle<T> {
    checkArray("allGather", data);
    return done(data.slice() as T);
  }
  allGatherBlocking<T extends CommArray>(data: T): T {
    checkArray("allGatherBlocking", data);
    return data.slice() as T;
  }
  reduceScatter<T extends CommArray>(data: T, op: CommReduceOp): CommHandle<T> {
    checkArray("reduceScatter", data);
    checkOp("reduceScatter", data, op);
    return done(data.slice() as T);
  }
  broadcast(data: CommArray, root: number): CommHandle {
    checkArray("broadcast", data);
    if (root !== 0) throw new DistributedError("BAD_ARGUMENT", `broadcast: root must be a rank in [0, 1), got ${root}`);
    return done(undefined);
  }
  barrier(): CommHandle {
    return done(undefined);
  }
  progress(): void {}
  abort(code: number): never {
    process.exit(code);
  }
  async close(): Promise<void> {}
}
