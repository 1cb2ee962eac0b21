/** Machine-readable reason for a {@link SafetensorsError}. */
export type SafetensorsErrorCode =
  /** The file is shorter than the 8-byte length prefix or than its header says. */
  | "truncated"
  /** The header length prefix is larger than the allowed maximum. */
  | "header_too_large"
  /** The header is not valid UTF-8. */
  | "invalid_utf8"
  /** The header is not valid JSON. */
  | "invalid_json"
  /** The header is JSON but not the expected structure (e.g. not an object, missing fields). */
  | "invalid_header"
  /** A tensor uses a dtype this library does not know. */
  | "unknown_dtype"
  /** A shape is not an array of non-negative safe integers, or its element count overflows. */
  | "invalid_shape"
  /** data_offsets is not a pair [begin, end] of safe integers with begin <= end. */
  | "invalid_offsets"
  /** data_offsets point past the end of the byte buffer. */
  | "offsets_out_of_range"
  /** end - begin differs from numel * dtype size (or the data given to the writer has the wrong size). */
  | "size_mismatch"
  /** Two tensors share bytes. */
  | "overlap"
  /** Bytes of the buffer are covered by no tensor. */
  | "hole"
  /** __metadata__ is not an object of string values. */
  | "invalid_metadata"
  /** Writer input data is not a typed array / ArrayBufferView. */
  | "invalid_data"
  /** A tensor name is invalid (writer: reserved or not well-formed Unicode). */
  | "invalid_name"
  /** The requested tensor does not exist. */
  | "tensor_not_found"
  /** The file was closed. */
  | "closed"
  /** A sharded index is malformed or disagrees with its shards. */
  | "invalid_index"
  /** A shard named by an index does not exist. */
  | "missing_shard"
  /** Neither an index nor a single model file was found. */
  | "not_found"
  /** An I/O operation failed; `cause` holds the original error. */
  | "io";

/**
 * The only error type thrown by this package for bad input files and bad
 * writer input. `file` and `tensor` let callers point users to the culprit
 * without parsing the message.
 */
export class SafetensorsError extends Error {
  override readonly name = "SafetensorsError";
  readonly code: SafetensorsErrorCode;
  /** The file (path, File name, or label) the problem was found in. */
  readonly file: string;
  /** The tensor concerned, when there is one. */
  readonly tensor: string | undefined;

  constructor(code: SafetensorsErrorCode, file: string, tensor: string | undefined, problem: string, options?: { cause?: unknown }) {
    // Names come from untrusted headers: cap what goes into the message (the full name stays in `tensor`).
    const shown = tensor !== undefined && tensor.length > 200 ? `${tensor.slice(0, 200)}...` : tensor;
    const where = shown === undefined ? "" : ` tensor ${JSON.stringify(shown)}:`;
    super(`${file}:${where} ${problem}`, options);
    this.code = code;
    this.file = file;
    this.tensor = tensor;
  }
}

/** Wraps a non-SafetensorsError (I/O failure) so callers only ever see one error type. */
export function asIoError(err: unknown, file: string, tensor: string | undefined, what: string): SafetensorsError {
  if (err instanceof SafetensorsError) return err;
  const detail = err instanceof Error ? err.message : String(err);
  return new SafetensorsError("io", file, tensor, `${what}: ${detail}`, { cause: err });
}

/**
 * A short rendering of a header value for error messages. Bounded in depth
 * and length, without recursion into deep values: a hostile header can nest
 * arrays millions deep, which would overflow the stack of JSON.stringify.
 */
export function describe(v: unknown, depth = 2): string {
  let s: string;
  if (v === null || typeof v === "number" || typeof v === "boolean") s = String(v);
  else if (typeof v === "string") s = JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  else if (Array.isArray(v)) {
    if (depth === 0) return v.length === 0 ? "[]" : "[...]";
    const items = v.slice(0, 8).map((x) => describe(x, depth - 1));
    s = `[${items.join(", ")}${v.length > 8 ? ", ..." : ""}]`;
  } else if (typeof v === "object") s = depth === 0 ? "{...}" : "an object";
  else s = typeof v;
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
