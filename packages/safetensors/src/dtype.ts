/**
 * safetensors dtypes, in the reference implementation's enum order (which is
 * increasing alignment). The writer sorts tensors by this order, descending.
 * Sub-byte dtypes (F4, F6_*) are not supported: their byte size is not
 * numel * an integer element size.
 */
export const DTYPES = [
  "BOOL",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "F8_E8M0",
  "I16",
  "U16",
  "F16",
  "BF16",
  "I32",
  "U32",
  "F32",
  "C64",
  "F64",
  "I64",
  "U64",
] as const;

export type Dtype = (typeof DTYPES)[number];

const SIZES: Record<Dtype, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  C64: 8,
  F64: 8,
  I64: 8,
  U64: 8,
};

const RANK = new Map<string, number>(DTYPES.map((d, i) => [d, i]));

export function isDtype(value: unknown): value is Dtype {
  return typeof value === "string" && RANK.has(value);
}

/** Bytes per element. */
export function dtypeSize(dtype: Dtype): number {
  return SIZES[dtype];
}

/** Position in the reference enum; higher sorts first when writing. */
export function dtypeRank(dtype: Dtype): number {
  return RANK.get(dtype) ?? -1;
}

/** Number of elements, or undefined when it would exceed Number.MAX_SAFE_INTEGER. */
export function numelOf(shape: readonly number[]): number | undefined {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (n > Number.MAX_SAFE_INTEGER) return undefined;
  }
  return n;
}

export type TypedArray =
  | Int8Array
  | Uint8Array
  | Uint8ClampedArray
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Float32Array
  | Float64Array
  | BigInt64Array
  | BigUint64Array;

/** The typed array toTypedArray returns for each dtype. */
export type TypedArrayFor<D extends Dtype> = D extends "F32" | "C64"
  ? Float32Array
  : D extends "F64"
  ? Float64Array
  : D extends "F16" | "BF16" | "U16"
  ? Uint16Array
  : D extends "I16"
  ? Int16Array
  : D extends "I32"
  ? Int32Array
  : D extends "U32"
  ? Uint32Array
  : D extends "I64"
  ? BigInt64Array
  : D extends "U64"
  ? BigUint64Array
  : D extends "I8"
  ? Int8Array
  : Uint8Array;

/** Safetensors data is little-endian; typed arrays use the host order. */
export const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Byte swap in place, for big-endian hosts only. */
function swapBytes(bytes: Uint8Array, width: number): void {
  if (width === 1) return;
  for (let i = 0; i + width <= bytes.length; i += width) {
    for (let a = i, b = i + width - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

/** Width of one swappable unit: C64 is two F32s. */
function swapWidth(dtype: Dtype): number {
  return dtype === "C64" ? 4 : SIZES[dtype];
}

/**
 * Copies raw little-endian tensor bytes into a fresh, aligned typed array.
 * F16/BF16 come back as raw bits (Uint16Array), C64 as interleaved
 * (re, im) Float32Array, F8 types/BOOL as Uint8Array.
 */
export function toTypedArray<D extends Dtype>(tensor: { dtype: D; data: Uint8Array }): TypedArrayFor<D> {
  const { dtype, data } = tensor;
  const size = SIZES[dtype];
  if (size === undefined) throw new TypeError(`toTypedArray: unknown dtype ${String(dtype)}`);
  if (data.byteLength % size !== 0) {
    throw new RangeError(`toTypedArray: ${data.byteLength} bytes is not a multiple of ${dtype} size ${size}`);
  }
  // slice() copies into a new buffer at offset 0, so every view below is aligned.
  const bytes = data.slice();
  if (!HOST_IS_LITTLE_ENDIAN) swapBytes(bytes, swapWidth(dtype));
  const buf = bytes.buffer;
  const n = bytes.byteLength / size;
  let out: TypedArray;
  switch (dtype) {
    case "F32":
      out = new Float32Array(buf, 0, n);
      break;
    case "C64":
      out = new Float32Array(buf, 0, n * 2);
      break;
    case "F64":
      out = new Float64Array(buf, 0, n);
      break;
    case "F16":
    case "BF16":
    case "U16":
      out = new Uint16Array(buf, 0, n);
      break;
    case "I16":
      out = new Int16Array(buf, 0, n);
      break;
    case "I32":
      out = new Int32Array(buf, 0, n);
      break;
    case "U32":
      out = new Uint32Array(buf, 0, n);
      break;
    case "I64":
      out = new BigInt64Array(buf, 0, n);
      break;
    case "U64":
      out = new BigUint64Array(buf, 0, n);
      break;
    case "I8":
      out = new Int8Array(buf, 0, n);
      break;
    default:
      out = bytes;
  }
  return out as TypedArrayFor<D>;
}

/**
 * Little-endian bytes of typed-array data for the writer. On little-endian
 * hosts this is a zero-copy view; big-endian hosts get a swapped copy.
 */
export function toLittleEndianBytes(data: ArrayBufferView, dtype: Dtype): Uint8Array {
  const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const elem = (data as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
  if (HOST_IS_LITTLE_ENDIAN || elem === 1) return view;
  const copy = view.slice();
  swapBytes(copy, dtype === "C64" ? 4 : elem);
  return copy;
}
