import type { Dtype } from "./dtype.ts";
import { SafetensorsError, asIoError } from "./errors.ts";
import { DEFAULT_MAX_HEADER_BYTES, type TensorInfo, parseHeader, parseHeaderLength } from "./header.ts";
import { type ByteSource, type SafetensorsSource, openSource } from "./source.ts";

/** A tensor's raw bytes: little-endian, C order, exactly numel * dtype size long. */
export interface TensorData {
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

export interface OpenOptions {
  /** Largest header accepted, in bytes (default 100 MB, like the reference). */
  maxHeaderBytes?: number;
  /** Name used in error messages (default: the path, the File's name, "<blob>" or "<bytes>"). */
  label?: string;
}

/** Anything tensors can be read from by name: one file or a sharded checkpoint. */
export interface TensorReader {
  readonly tensors: Readonly<Record<string, TensorInfo>>;
  /** Names in storage order. */
  readonly names: readonly string[];
  has(name: string): boolean;
  read(name: string): Promise<TensorData>;
  close(): Promise<void>;
}

/**
 * An open safetensors file. Only the header is read at open time; each
 * `read(name)` fetches that tensor's bytes with a single positioned read.
 */
export class SafetensorsFile implements TensorReader {
  /** Name -> where the tensor lives. A null-prototype record. */
  readonly tensors: Readonly<Record<string, TensorInfo>>;
  readonly names: readonly string[];
  /** `__metadata__`, empty when the file has none. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The label used in error messages. */
  readonly file: string;
  /** Total file size in bytes. */
  readonly size: number;
  /** Byte position where tensor data starts (8 + header length). */
  readonly dataStart: number;
  #source: ByteSource | undefined;

  /** Use {@link openSafetensors}; the constructor trusts an already-validated header. */
  constructor(source: ByteSource, header: ReturnType<typeof parseHeader>) {
    this.#source = source;
    this.file = source.label;
    this.size = source.size;
    this.tensors = Object.freeze(header.tensors);
    this.names = Object.freeze(header.names);
    this.metadata = Object.freeze(header.metadata);
    this.dataStart = header.dataStart;
  }

  has(name: string): boolean {
    return Object.hasOwn(this.tensors, name);
  }

  info(name: string): TensorInfo {
    if (!this.has(name)) {
      throw new SafetensorsError("tensor_not_found", this.file, name, "no such tensor");
    }
    return this.tensors[name];
  }

  /** Reads one tensor's raw little-endian bytes. For in-memory sources `data` is a view, not a copy. */
  async read(name: string): Promise<TensorData> {
    const info = this.info(name);
    const source = this.#source;
    if (source === undefined) throw new SafetensorsError("closed", this.file, name, "file is closed");
    let data: Uint8Array;
    try {
      data = await source.read(info.byteOffset, info.byteLength);
    } catch (err) {
      throw asIoError(err, this.file, name, "read failed");
    }
    return { dtype: info.dtype, shape: info.shape, data };
  }

  /** Reads every tensor, one at a time, in storage order. */
  async *entries(): AsyncGenerator<[string, TensorData]> {
    for (const name of this.names) yield [name, await this.read(name)];
  }

  get closed(): boolean {
    return this.#source === undefined;
  }

  /** Releases the file handle. Safe to call twice. */
  async close(): Promise<void> {
    const source = this.#source;
    this.#source = undefined;
    if (source !== undefined) {
      try {
        await source.close();
      } catch (err) {
        throw asIoError(err, this.file, undefined, "close failed");
      }
    }
  }
}

/**
 * Opens a safetensors file from a path or file: URL (Node, Bun, Deno), a
 * Blob/File (browsers), or bytes already in memory, and validates its header.
 * Throws {@link SafetensorsError} for anything malformed.
 */
export async function openSafetensors(input: SafetensorsSource, options: OpenOptions = {}): Promise<SafetensorsFile> {
  const source = await openSource(input, options.label);
  try {
    return await openFromSource(source, options);
  } catch (err) {
    await source.close().catch(() => {});
    throw err;
  }
}

/** Parses the header of any {@link ByteSource}; exported for custom sources (e.g. HTTP range reads). */
export async function openFromSource(source: ByteSource, options: OpenOptions = {}): Promise<SafetensorsFile> {
  const file = source.label;
  const maxHeaderBytes = options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
  const size = source.size;
  if (size < 8) parseHeaderLength(new Uint8Array(0), size, file, maxHeaderBytes);
  const prefix = await readOrWrap(source, 0, 8);
  const n = parseHeaderLength(prefix, size, file, maxHeaderBytes);
  const headerBytes = await readOrWrap(source, 8, n);
  return new SafetensorsFile(source, parseHeader(headerBytes, size - 8 - n, file));
}

async function readOrWrap(source: ByteSource, offset: number, length: number): Promise<Uint8Array> {
  try {
    return await source.read(offset, length);
  } catch (err) {
    throw asIoError(err, source.label, undefined, "reading the header failed");
  }
}
