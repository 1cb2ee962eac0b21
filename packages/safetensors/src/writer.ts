import { type Dtype, dtypeRank, dtypeSize, isDtype, numelOf, toLittleEndianBytes } from "./dtype.ts";
import { SafetensorsError, asIoError, describe } from "./errors.ts";
import { compareCodePoints, encodeHeader } from "./header.ts";
import { type WriteHandle, basename, dirname, joinPath, storage } from "./storage.ts";

/** One tensor to write. `data` holds little-endian bytes (Uint8Array) or host-order typed-array values. */
export interface TensorInput {
  dtype: Dtype;
  shape: readonly number[];
  data: ArrayBufferView;
}

/** Tensor data, or a function producing it when the writer gets to it (keeps only one tensor in memory). */
export type TensorDataSource = ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);

export interface LazyTensorInput {
  dtype: Dtype;
  shape: readonly number[];
  data: TensorDataSource;
}

export type TensorMap<T> = Readonly<Record<string, T>> | ReadonlyMap<string, T>;

export interface PlannedTensor {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
  byteLength: number;
  data: TensorDataSource;
}

export interface Plan {
  /** 8-byte length prefix + padded JSON header. */
  head: Uint8Array;
  tensors: PlannedTensor[];
  /** Total file size. */
  size: number;
}

function entriesOf<T>(tensors: TensorMap<T>): [string, T][] {
  if (tensors instanceof Map) return [...tensors.entries()];
  return Object.keys(tensors).map((k) => [k, (tensors as Record<string, T>)[k]]);
}

/** Lone surrogates cannot be encoded as UTF-8, so the reference would reject the header. */
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/** Byte view of eager data, checked against the declared dtype and size. */
export function checkData(data: unknown, t: { name: string; dtype: Dtype; byteLength: number }, file: string): Uint8Array {
  if (!ArrayBuffer.isView(data)) {
    throw new SafetensorsError("invalid_data", file, t.name, "data is not a Uint8Array, typed array or DataView");
  }
  const elem = (data as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
  // Catches e.g. a Float32Array passed as F16; byte-wide arrays are taken as raw bytes.
  if (elem !== 1 && elem !== dtypeSize(t.dtype) && !(t.dtype === "C64" && elem === 4)) {
    throw new SafetensorsError("size_mismatch", file, t.name, `${data.constructor.name} has ${elem}-byte elements but ${t.dtype} needs ${dtypeSize(t.dtype)}`);
  }
  if (data.byteLength !== t.byteLength) {
    throw new SafetensorsError("size_mismatch", file, t.name, `data has ${data.byteLength} bytes but ${t.dtype} shape needs ${t.byteLength}`);
  }
  return toLittleEndianBytes(data, t.dtype);
}

function checkMetadata(metadata: unknown, file: string): Record<string, string> | undefined {
  if (metadata === undefined || metadata === null) return undefined;
  if (typeof metadata !== "object" || Array.isArray(metadata)) {
    throw new SafetensorsError("invalid_metadata", file, undefined, "metadata must be an object of strings");
  }
  const out: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") {
      throw new SafetensorsError("invalid_metadata", file, undefined, `metadata ${JSON.stringify(k)} is a ${typeof v}, not a string`);
    }
    if (LONE_SURROGATE.test(k) || LONE_SURROGATE.test(v)) {
      throw new SafetensorsError("invalid_metadata", file, undefined, `metadata ${JSON.stringify(k)} is not well-formed Unicode`);
    }
    out[k] = v;
  }
  return out;
}

/**
 * Validates the input and lays the file out like the Python/Rust reference:
 * tensors sorted by dtype rank descending (the reference's enum is in
 * increasing alignment order, so 8-byte types come first and every tensor
 * stays aligned), then by name in code-point order; `__metadata__` first in
 * the header; header padded with spaces to a multiple of 8.
 */
export function planSafetensors(tensors: TensorMap<LazyTensorInput>, metadata: Record<string, string> | undefined, file: string): Plan {
  const meta = checkMetadata(metadata, file);
  const planned: PlannedTensor[] = [];
  for (const [name, t] of entriesOf(tensors)) {
    if (name === "__metadata__") {
      throw new SafetensorsError("invalid_name", file, name, "the name __metadata__ is reserved");
    }
    if (LONE_SURROGATE.test(name)) throw new SafetensorsError("invalid_name", file, name, "name is not well-formed Unicode");
    if (typeof t !== "object" || t === null) throw new SafetensorsError("invalid_data", file, name, "expected {dtype, shape, data}");
    if (!isDtype(t.dtype)) throw new SafetensorsError("unknown_dtype", file, name, `unknown dtype ${describe(t.dtype)}`);
    const shape = t.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError("invalid_shape", file, name, `shape ${describe(shape)} is not an array of non-negative integers`);
    }
    const dims = shape.map((d) => d + 0); // -0 -> 0
    const numel = numelOf(dims);
    if (numel === undefined || numel * dtypeSize(t.dtype) > Number.MAX_SAFE_INTEGER) {
      throw new SafetensorsError("invalid_shape", file, name, `shape [${dims.join(", ")}] has too many elements`);
    }
    const p: PlannedTensor = { name, dtype: t.dtype, shape: dims, byteLength: numel * dtypeSize(t.dtype), data: t.data };
    if (typeof t.data !== "function") checkData(t.data, p, file);
    planned.push(p);
  }
  planned.sort((a, b) => dtypeRank(b.dtype) - dtypeRank(a.dtype) || compareCodePoints(a.name, b.name));
  let offset = 0;
  const entries = planned.map((p) => {
    const e = { name: p.name, dtype: p.dtype, shape: p.shape, begin: offset, end: offset + p.byteLength };
    offset = e.end;
    return e;
  });
  const header = encodeHeader(entries, meta);
  const head = new Uint8Array(8 + header.byteLength);
  new DataView(head.buffer).setBigUint64(0, BigInt(header.byteLength), true);
  head.set(header, 8);
  return { head, tensors: planned, size: head.byteLength + offset };
}

/** Serializes tensors to an in-memory safetensors file (browsers; small models). */
export function serializeSafetensors(tensors: TensorMap<TensorInput>, metadata?: Record<string, string>, options: { label?: string } = {}): Uint8Array {
  const file = options.label ?? "<serialize>";
  const plan = planSafetensors(tensors, metadata, file);
  const out = new Uint8Array(plan.size);
  out.set(plan.head);
  let pos = plan.head.byteLength;
  for (const t of plan.tensors) {
    if (typeof t.data === "function") {
      throw new SafetensorsError("invalid_data", file, t.name, "serializeSafetensors needs eager data; use writeSafetensors for lazy sources");
    }
    out.set(checkData(t.data, t, file), pos);
    pos += t.byteLength;
  }
  return out;
}

export interface WriteOptions {
  /** fsync the file (and its directory) before returning; default true. */
  fsync?: boolean;
}

/**
 * Writes a safetensors file atomically: the bytes go to a temporary file in
 * the same directory, which is fsynced and then renamed over `path`. On any
 * error the temporary file is removed and `path` is left as it was.
 * Lazy `data` functions are called one at a time, in file order.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorMap<LazyTensorInput>,
  metadata?: Record<string, string>,
  options: WriteOptions = {},
): Promise<void> {
  const plan = planSafetensors(tensors, metadata, path);
  await writeAtomic(path, options, async (write) => {
    await write(plan.head);
    for (const t of plan.tensors) {
      const data = typeof t.data === "function" ? await t.data() : t.data;
      await write(checkData(data, t, path));
    }
  });
}

type WriteFn = (bytes: Uint8Array) => Promise<void>;

/** Small writes are batched so files with many tiny tensors do not cost one syscall each. */
const BATCH_BYTES = 1 << 22;

/** Temp file + fsync + rename. Exported for the sharded writer (index files). */
export async function writeAtomic(path: string, options: WriteOptions, produce: (write: WriteFn) => Promise<void>): Promise<void> {
  const fs = storage();
  const dir = dirname(path);
  const rand = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  const tmp = joinPath(dir, `.${basename(path)}.${rand}.tmp`);
  let handle: WriteHandle | undefined;
  try {
    handle = await fs.openWrite(tmp, "wx");
  } catch (err) {
    throw asIoError(err, path, undefined, "cannot create temporary file");
  }
  const fh = handle;
  let batch = new Uint8Array(BATCH_BYTES);
  let used = 0;
  const writeRaw = async (bytes: Uint8Array): Promise<void> => {
    try {
      await fh.write(bytes);
    } catch (err) {
      throw asIoError(err, path, undefined, "write failed");
    }
  };
  const flush = async (): Promise<void> => {
    if (used > 0) await writeRaw(batch.subarray(0, used));
    used = 0;
  };
  const write: WriteFn = async (bytes) => {
    if (bytes.byteLength >= BATCH_BYTES / 2) {
      await flush();
      await writeRaw(bytes);
      return;
    }
    if (used + bytes.byteLength > BATCH_BYTES) await flush();
    batch.set(bytes, used);
    used += bytes.byteLength;
  };
  let stage = "write";
  try {
    await produce(write);
    await flush();
    stage = "fsync";
    if (options.fsync !== false) await fh.sync();
    stage = "close";
    handle = undefined;
    await fh.close();
    stage = "rename";
    await fs.rename(tmp, path);
  } catch (err) {
    if (handle !== undefined) await handle.close().catch(() => {});
    await fs.rm(tmp).catch(() => {});
    // Write errors are already wrapped; errors from the caller's own data sources pass through untouched.
    if (stage === "write") throw err;
    throw asIoError(err, path, undefined, `${stage} failed`);
  } finally {
    batch = new Uint8Array(0);
  }
  // Makes the rename durable; best effort (the file itself is already synced).
  if (options.fsync !== false) await fs.syncDir(dir);
}
