import { type Dtype, dtypeSize, isDtype, numelOf } from "./dtype.ts";
import { SafetensorsError, describe as short } from "./errors.ts";

/** Same cap as the reference implementation (100 MB). */
export const DEFAULT_MAX_HEADER_BYTES = 100_000_000;

/** Where one tensor lives. `byteOffset` is absolute in the file. */
export interface TensorInfo {
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** Absolute position in the file (8 + header length + data_offsets[0]). */
  readonly byteOffset: number;
  readonly byteLength: number;
}

export interface ParsedHeader {
  /** Null-prototype record, so a tensor named "__proto__" is just a key. */
  tensors: Record<string, TensorInfo>;
  /** Tensor names in file (offset) order. */
  names: string[];
  metadata: Record<string, string>;
  /** 8 + header length: where the byte buffer starts. */
  dataStart: number;
}

/** Reads the u64 little-endian header length; rejects values that cannot be a valid header. */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number, file: string, maxHeaderBytes: number): number {
  if (fileSize < 8 || prefix.byteLength < 8) {
    throw new SafetensorsError("truncated", file, undefined, `file is ${fileSize} bytes, shorter than the 8-byte header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(maxHeaderBytes)) {
    throw new SafetensorsError("header_too_large", file, undefined, `header length ${n} exceeds the maximum of ${maxHeaderBytes} bytes`);
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new SafetensorsError("truncated", file, undefined, `header length ${len} runs past the end of the ${fileSize}-byte file`);
  }
  return len;
}

// fatal: reject invalid UTF-8 instead of inserting U+FFFD; ignoreBOM: keep a BOM so JSON.parse rejects it like the reference.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Parses and validates the JSON header against a buffer of `bufferLength`
 * bytes. Checks mirror the reference: known dtype, integer shape, offsets in
 * range, size == numel * dtype size, and tensors tiling the buffer exactly.
 */
export function parseHeader(headerBytes: Uint8Array, bufferLength: number, file: string): ParsedHeader {
  let text: string;
  try {
    text = decoder.decode(headerBytes);
  } catch (err) {
    throw new SafetensorsError("invalid_utf8", file, undefined, "header is not valid UTF-8", { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    throw new SafetensorsError("invalid_json", file, undefined, `header is not valid JSON (${detail})`, { cause: err });
  }
  if (!isPlainObject(json)) {
    throw new SafetensorsError("invalid_header", file, undefined, "header is not a JSON object");
  }
  const dataStart = 8 + headerBytes.byteLength;
  const metadata = parseMetadata(json["__metadata__"], file);
  const tensors: Record<string, TensorInfo> = Object.create(null);
  const spans: { name: string; begin: number; end: number }[] = [];

  for (const name of Object.keys(json)) {
    if (name === "__metadata__") continue;
    const entry = json[name];
    if (!isPlainObject(entry)) {
      throw new SafetensorsError("invalid_header", file, name, "entry is not an object with dtype, shape and data_offsets");
    }
    const { dtype, shape, data_offsets: offsets } = entry;
    if (!isDtype(dtype)) {
      throw new SafetensorsError("unknown_dtype", file, name, `unknown dtype ${short(dtype)}`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError("invalid_shape", file, name, `shape ${short(shape)} is not an array of non-negative integers`);
    }
    // "+ 0" turns a JSON "-0" into 0 so sizes and offsets never come out as -0.
    const dims = shape.map((d: number) => d + 0);
    const numel = numelOf(dims);
    if (numel === undefined || numel * dtypeSize(dtype) > Number.MAX_SAFE_INTEGER) {
      throw new SafetensorsError("invalid_shape", file, name, `shape ${short(shape)} has too many elements`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
      throw new SafetensorsError("invalid_offsets", file, name, `data_offsets ${short(offsets)} is not [begin, end] with 0 <= begin <= end`);
    }
    const begin = (offsets[0] as number) + 0;
    const end = (offsets[1] as number) + 0;
    if (end > bufferLength) {
      throw new SafetensorsError(
        "offsets_out_of_range",
        file,
        name,
        `data_offsets [${begin}, ${end}] run past the end of the ${bufferLength}-byte data buffer`,
      );
    }
    const expected = numel * dtypeSize(dtype);
    if (end - begin !== expected) {
      throw new SafetensorsError(
        "size_mismatch",
        file,
        name,
        `data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} [${dims.join(", ")}] needs ${expected}`,
      );
    }
    tensors[name] = Object.freeze({ dtype, shape: Object.freeze(dims), byteOffset: dataStart + begin, byteLength: expected });
    spans.push({ name, begin, end });
  }

  // Same order as the reference: by (begin, end), then every tensor must start where the previous ended.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: string | undefined;
  for (const s of spans) {
    if (s.begin < pos) {
      throw new SafetensorsError("overlap", file, s.name, `data_offsets [${s.begin}, ${s.end}] overlap ${JSON.stringify(prev)} which ends at ${pos}`);
    }
    if (s.begin > pos) {
      throw new SafetensorsError("hole", file, s.name, `data_offsets [${s.begin}, ${s.end}] leave bytes [${pos}, ${s.begin}) of the data buffer unused`);
    }
    pos = s.end;
    prev = s.name;
  }
  if (pos !== bufferLength) {
    throw new SafetensorsError(
      "hole",
      file,
      undefined,
      `tensors cover ${pos} bytes but the data buffer has ${bufferLength}; bytes [${pos}, ${bufferLength}) are unused`,
    );
  }
  return { tensors, names: spans.map((s) => s.name), metadata, dataStart };
}

function parseMetadata(value: unknown, file: string): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  // The reference treats a null __metadata__ as absent.
  if (value === undefined || value === null) return out;
  if (!isPlainObject(value)) {
    throw new SafetensorsError("invalid_metadata", file, undefined, "__metadata__ is not an object of strings");
  }
  for (const key of Object.keys(value)) {
    const v = value[key];
    if (typeof v !== "string") {
      throw new SafetensorsError("invalid_metadata", file, undefined, `__metadata__ ${short(key)} is ${short(v)}, not a string`);
    }
    out[key] = v;
  }
  return out;
}

/** Compares by Unicode code point, which equals UTF-8 byte order (what the Rust reference uses). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (U+D800..DFFF) encode code points above U+FFFF, so they sort after every other BMP unit.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

export interface HeaderEntry {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
  begin: number;
  end: number;
}

/**
 * Builds the header bytes: __metadata__ first, then entries in the given
 * order, padded with spaces to a multiple of 8 so the data is 8-aligned.
 * Built by hand because JSON.stringify of an object would move
 * integer-like tensor names ("0", "1") to the front.
 */
export function encodeHeader(entries: readonly HeaderEntry[], metadata: Record<string, string> | undefined): Uint8Array {
  const parts: string[] = [];
  if (metadata !== undefined && Object.keys(metadata).length > 0) {
    const kv = Object.keys(metadata).map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`);
    parts.push(`"__metadata__":{${kv.join(",")}}`);
  }
  for (const e of entries) {
    parts.push(`${JSON.stringify(e.name)}:{"dtype":"${e.dtype}","shape":[${e.shape.join(",")}],"data_offsets":[${e.begin},${e.end}]}`);
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const out = new Uint8Array(padded).fill(0x20);
  out.set(json);
  return out;
}
