import { open, rename, unlink, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { FormatsError } from "./errors";

export interface AtomicWriteOptions {
  /** fsync the file (and its directory) before/after the rename. Default true. */
  durable?: boolean;
}

const COALESCE = 4 << 20;

/**
 * A file written under a temporary name in the target's directory, then fsynced and renamed
 * over the final name, so a crash never leaves a half-written file under that name.
 * Small writes are coalesced into a 4 MiB buffer; large ones go straight to the handle.
 */
export class AtomicFile {
  readonly path: string;
  readonly tempPath: string;
  readonly #durable: boolean;
  #fh: FileHandle | undefined;
  #position = 0;
  #buf: Uint8Array | undefined;
  #bufLen = 0;
  #state: "open" | "committed" | "aborted" = "open";

  private constructor(path: string, tempPath: string, fh: FileHandle, durable: boolean) {
    this.path = path;
    this.tempPath = tempPath;
    this.#fh = fh;
    this.#durable = durable;
  }

  static async create(path: string, options: AtomicWriteOptions = {}): Promise<AtomicFile> {
    const tempPath = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
    let fh: FileHandle;
    try {
      fh = await open(tempPath, "wx");
    } catch (e) {
      throw new FormatsError("io", `cannot create temporary file ${tempPath}: ${(e as Error).message}`, {
        file: path,
        cause: e,
      });
    }
    return new AtomicFile(path, tempPath, fh, options.durable ?? true);
  }

  /** Bytes written so far (the current end of the file). */
  get position(): number {
    return this.#position + this.#bufLen;
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#state !== "open")
      throw new FormatsError("writer_closed", `write after ${this.#state}`, { file: this.path });
    if (bytes.byteLength === 0) return;
    if (bytes.byteLength >= COALESCE) {
      await this.#flush();
      await this.#writeRaw(bytes);
      return;
    }
    if (this.#buf === undefined) this.#buf = new Uint8Array(COALESCE);
    if (this.#bufLen + bytes.byteLength > COALESCE) await this.#flush();
    this.#buf.set(bytes, this.#bufLen);
    this.#bufLen += bytes.byteLength;
  }

  async writeZeros(n: number): Promise<void> {
    if (n > 0) await this.write(new Uint8Array(n));
  }

  async #flush(): Promise<void> {
    if (this.#bufLen === 0 || this.#buf === undefined) return;
    const len = this.#bufLen;
    this.#bufLen = 0;
    await this.#writeRaw(this.#buf.subarray(0, len));
  }

  async #writeRaw(bytes: Uint8Array): Promise<void> {
    const fh = this.#fh!;
    let done = 0;
    try {
      while (done < bytes.byteLength) {
        const { bytesWritten } = await fh.write(
          bytes,
          done,
          Math.min(bytes.byteLength - done, 1 << 30),
          this.#position,
        );
        done += bytesWritten;
        this.#position += bytesWritten;
      }
    } catch (e) {
      throw new FormatsError("io", `write failed at offset ${this.#position}: ${(e as Error).message}`, {
        file: this.path,
        cause: e,
      });
    }
  }

  /** Flushes, fsyncs, closes and renames the temporary file over the final path. */
  async commit(): Promise<void> {
    if (this.#state !== "open")
      throw new FormatsError("writer_closed", `commit after ${this.#state}`, { file: this.path });
    try {
      await this.#flush();
      if (this.#durable) await this.#fh!.sync();
      await this.#fh!.close();
      this.#fh = undefined;
      await rename(this.tempPath, this.path);
      this.#state = "committed";
    } catch (e) {
      await this.abort();
      if (e instanceof FormatsError) throw e;
      throw new FormatsError("io", `cannot finish writing: ${(e as Error).message}`, { file: this.path, cause: e });
    }
    if (this.#durable) {
      // Make the rename itself durable. Some filesystems refuse fsync on a directory; that is not an error here.
      const dir = await open(dirname(this.path), "r").catch(() => undefined);
      if (dir !== undefined) {
        await dir.sync().catch(() => undefined);
        await dir.close().catch(() => undefined);
      }
    }
  }

  /** Closes and removes the temporary file; the final path is left untouched. Idempotent. */
  async abort(): Promise<void> {
    if (this.#state === "committed") return;
    this.#state = "aborted";
    const fh = this.#fh;
    this.#fh = undefined;
    if (fh !== undefined) await fh.close().catch(() => undefined);
    await unlink(this.tempPath).catch(() => undefined);
  }
}
