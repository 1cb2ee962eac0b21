// Blockwise 4-bit quantization with bitsandbytes' semantics (CUDA kQuantizeBlockwise with
// dQuantizeNF4 / dQuantizeFP4), plus double quantization of the absmax statistics.
// All arithmetic is float32, emulated with Math.fround / Float32Array stores.

import { codebook, dynamicMap, FP4_BUCKET_BITS, FP4_MAGNITUDE_THRESHOLDS, midpoints, NF4_THRESHOLDS, type QuantType } from "./codebooks.ts";

export type { QuantType } from "./codebooks.ts";

/** The dtype recorded in the quant-state JSON (`str(torch_dtype)` without "torch."). */
export type QuantDtype = "float32" | "float16" | "bfloat16";

/** Double-quantized absmax: 8-bit codes of `absmax - offset`, blockwise over 256. */
export interface NestedAbsmax {
  /** One dynamic-map code per 4-bit block. */
  qabsmax: Uint8Array;
  /** float32 max |absmax - offset| per 256 blocks. */
  nestedAbsmax: Float32Array;
  /** float32 mean of the absmax values. */
  nestedOffset: number;
  /** bnb only implements 256 (MatMul4Bit rejects anything else). */
  nestedBlocksize: 256;
  /** The 256-entry signed dynamic map (the file's `nested_quant_map`). */
  nestedCode: Float32Array;
}

/** Everything needed to dequantize, mirroring bnb's `QuantState`. */
export interface QuantState {
  /** Two codes per byte, the even (first) element in the high nibble; (n+1)>>1 bytes. */
  packed: Uint8Array;
  /** float32 absmax per block, or its double-quantized form. */
  absmax: Float32Array | NestedAbsmax;
  /** The 16-entry code table (`quant_map`); dequantization reads it. */
  quantMap: Float32Array;
  quantType: QuantType;
  blocksize: number;
  /** Original shape, e.g. [out, in] for a Linear weight. */
  shape: number[];
  dtype: QuantDtype;
}

export interface QuantizeOptions {
  /** Default "nf4" (bnb and transformers default to "fp4": the defaults trap). */
  quantType?: QuantType;
  /** Default 64. A power of two in 32..4096. */
  blocksize?: number;
  /** Default true (bnb Linear4bit: true, transformers: false). */
  doubleQuant?: boolean;
  /** Default [x.length]. Its product must equal x.length. */
  shape?: readonly number[];
  /** Label recorded in the state; the input is always float32. Default "float32". */
  dtype?: QuantDtype;
}

export const VALID_BLOCKSIZES: readonly number[] = Object.freeze([32, 64, 128, 256, 512, 1024, 2048, 4096]);
export const NESTED_BLOCKSIZE = 256;
const QUANT_DTYPES: readonly string[] = ["float32", "float16", "bfloat16"];

// formats.md 2.3: a zero absmax is clamped to 1e-38 before taking the reciprocal, so an
// all-zero block quantizes to the code of 0.0 instead of NaN-driven code 0.
const ABSMAX_FLOOR = Math.fround(1e-38);

const NF4_T = Float64Array.from(NF4_THRESHOLDS);
const FP4_T = Float64Array.from(FP4_MAGNITUDE_THRESHOLDS);
const FP4_BUCKET_BITS_ARR = Uint8Array.from(FP4_BUCKET_BITS);
const DYN_CODE = dynamicMap();
const DYN_MIDS = midpoints(DYN_CODE);

/** True when `state.absmax` is double-quantized. */
export function isNested(absmax: Float32Array | NestedAbsmax): absmax is NestedAbsmax {
  return !(absmax instanceof Float32Array);
}

export function assertBlocksize(blocksize: number, what = "blocksize"): void {
  if (!VALID_BLOCKSIZES.includes(blocksize)) {
    throw new RangeError(`${what} must be one of ${VALID_BLOCKSIZES.join(", ")} (bitsandbytes), got ${blocksize}`);
  }
}

export function assertQuantType(quantType: string): asserts quantType is QuantType {
  if (quantType !== "nf4" && quantType !== "fp4") {
    throw new RangeError(`quantType must be "nf4" or "fp4", got ${JSON.stringify(quantType)}`);
  }
}

export function assertQuantDtype(dtype: string): asserts dtype is QuantDtype {
  if (!QUANT_DTYPES.includes(dtype)) {
    throw new RangeError(`dtype must be one of ${QUANT_DTYPES.join(", ")}, got ${JSON.stringify(dtype)}`);
  }
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`shape entries must be non-negative integers, got [${shape.join(", ")}]`);
    n *= d;
  }
  return n;
}

export function numBlocks(n: number, blocksize: number): number {
  return Math.ceil(n / blocksize);
}

/** max |x| over [start, end); rejects NaN and infinities, which CUDA turns into garbage. */
function blockAbsmax(x: Float32Array, start: number, end: number): number {
  let m = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(x[i]);
    if (a > m) m = a;
    else if (a !== a) throw new RangeError(`quantize4bit: element ${i} is NaN`);
  }
  if (m === Infinity) throw new RangeError(`quantize4bit: block starting at element ${start} contains an infinite value`);
  return m;
}

// CUDA dQuantizeNF4: a 4-level decision tree with `x > t`, so ties go to the lower code.
function quantizeNF4(s: number, t: Float64Array): number {
  if (s > t[7]) {
    if (s > t[11]) {
      if (s > t[13]) return s > t[14] ? 15 : 14;
      return s > t[12] ? 13 : 12;
    }
    if (s > t[9]) return s > t[10] ? 11 : 10;
    return s > t[8] ? 9 : 8;
  }
  if (s > t[3]) {
    if (s > t[5]) return s > t[6] ? 7 : 6;
    return s > t[4] ? 5 : 4;
  }
  if (s > t[1]) return s > t[2] ? 3 : 2;
  return s > t[0] ? 1 : 0;
}

// CUDA dQuantizeFP4: sign bit from `x < 0`, then the magnitude tree with `|x| > t`
// (ties go toward the smaller magnitude on both sides of zero).
function quantizeFP4(s: number, t: Float64Array): number {
  const sign = s < 0 ? 8 : 0;
  const a = Math.abs(s);
  let bucket: number;
  if (a > t[3]) {
    if (a > t[5]) bucket = a > t[6] ? 7 : 6;
    else bucket = a > t[4] ? 5 : 4;
  } else if (a > t[1]) bucket = a > t[2] ? 3 : 2;
  else bucket = a > t[0] ? 1 : 0;
  return FP4_BUCKET_BITS_ARR[bucket] + sign;
}

/**
 * Blockwise 4-bit quantization of a row-major float32 array, byte-compatible with
 * bitsandbytes' CUDA kernel: per-block absmax (a short tail is its own block),
 * s = x * f32(1/absmax), nearest code via the kernel's thresholds (ties to the lower
 * code for NF4), two codes per byte with the first element in the high nibble.
 */
export function quantize4bit(x: Float32Array, options: QuantizeOptions = {}): QuantState {
  const quantType = options.quantType ?? "nf4";
  const blocksize = options.blocksize ?? 64;
  const doubleQuant = options.doubleQuant ?? true;
  const dtype = options.dtype ?? "float32";
  assertQuantType(quantType);
  assertBlocksize(blocksize);
  assertQuantDtype(dtype);
  if (!(x instanceof Float32Array)) throw new TypeError("quantize4bit: x must be a Float32Array");
  const n = x.length;
  const shape = options.shape ? [...options.shape] : [n];
  if (numelOf(shape) !== n) {
    throw new RangeError(`quantize4bit: shape [${shape.join(", ")}] has ${numelOf(shape)} elements but x has ${n}`);
  }
  if (n === 0) throw new RangeError("quantize4bit: cannot quantize an empty tensor");

  const nb = numBlocks(n, blocksize);
  const absmax = new Float32Array(nb);
  const packed = new Uint8Array((n + 1) >> 1);
  const nf4 = quantType === "nf4";
  const t = nf4 ? NF4_T : FP4_T;
  const q = nf4 ? quantizeNF4 : quantizeFP4;

  for (let b = 0; b < nb; b++) {
    const start = b * blocksize;
    const end = Math.min(start + blocksize, n);
    const m = blockAbsmax(x, start, end);
    absmax[b] = m;
    // CUDA stores 1/absmax in a float and multiplies; both steps round to float32.
    const inv = Math.fround(1 / (m === 0 ? ABSMAX_FLOOR : m));
    // Blocksizes are even, so pairs never straddle blocks; only an odd tail is unpaired.
    let i = start;
    for (; i + 1 < end; i += 2) {
      const hi = q(Math.fround(x[i] * inv), t);
      const lo = q(Math.fround(x[i + 1] * inv), t);
      packed[i >> 1] = (hi << 4) | lo;
    }
    if (i < end) {
      // Odd total length: the pad nibble is the code of 0.0, as the kernel loads 0.0f
      // for out-of-range items (torch's reference also pads with 0.0).
      packed[i >> 1] = (q(Math.fround(x[i] * inv), t) << 4) | q(0, t);
    }
  }

  return {
    packed,
    absmax: doubleQuant ? quantizeAbsmax(absmax) : absmax,
    quantMap: codebook(quantType),
    quantType,
    blocksize,
    shape,
    dtype,
  };
}

/** Float32 mean, accumulated in float64 and rounded once (see docs/nf4-format.md). */
function meanF32(values: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i];
  return Math.fround(sum / values.length);
}

/** Nearest entry of a sorted code by float32 midpoints; ties go to the lower entry. */
function nearestSorted(s: number, mids: Float32Array): number {
  let lo = 0;
  let hi = mids.length; // answer = number of midpoints strictly below s
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (s > mids[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Double quantization (bnb `quantize_4bit(compress_statistics=True)`): offset = mean(absmax),
 * then `absmax - offset` is quantized blockwise (256) to the signed 8-bit dynamic map.
 */
export function quantizeAbsmax(absmax: Float32Array): NestedAbsmax {
  const nb = absmax.length;
  const offset = nb === 0 ? 0 : meanF32(absmax);
  const centered = new Float32Array(nb);
  for (let i = 0; i < nb; i++) centered[i] = absmax[i] - offset;
  const nn = numBlocks(nb, NESTED_BLOCKSIZE);
  const nestedAbsmax = new Float32Array(nn);
  const qabsmax = new Uint8Array(nb);
  for (let b = 0; b < nn; b++) {
    const start = b * NESTED_BLOCKSIZE;
    const end = Math.min(start + NESTED_BLOCKSIZE, nb);
    let m = 0;
    for (let i = start; i < end; i++) m = Math.max(m, Math.abs(centered[i]));
    nestedAbsmax[b] = m;
    const inv = Math.fround(1 / (m === 0 ? ABSMAX_FLOOR : m));
    for (let i = start; i < end; i++) {
      // The clamp only mirrors torch's reference; the nearest entry is the same without it.
      const s = Math.min(1, Math.max(-1, Math.fround(centered[i] * inv)));
      qabsmax[i] = nearestSorted(s, DYN_MIDS);
    }
  }
  return { qabsmax, nestedAbsmax, nestedOffset: offset, nestedBlocksize: NESTED_BLOCKSIZE, nestedCode: DYN_CODE.slice() };
}

/** absmax of blocks [first, last) as float32: dynmap[q] * nestedAbsmax[b/256] + offset. */
export function dequantizeAbsmax(state: Pick<QuantState, "absmax">, first = 0, last?: number): Float32Array {
  const a = state.absmax;
  const total = isNested(a) ? a.qabsmax.length : a.length;
  const end = last ?? total;
  if (!(first >= 0 && first <= end && end <= total)) {
    throw new RangeError(`dequantizeAbsmax: block range [${first}, ${end}) is outside [0, ${total})`);
  }
  if (!isNested(a)) return a.slice(first, end);
  const out = new Float32Array(end - first);
  const { qabsmax, nestedAbsmax, nestedCode, nestedOffset, nestedBlocksize } = a;
  for (let b = first; b < end; b++) {
    out[b - first] = Math.fround(nestedCode[qabsmax[b]] * nestedAbsmax[Math.floor(b / nestedBlocksize)]) + nestedOffset;
  }
  return out;
}

/** Checks sizes against shape/blocksize; returns the element count. */
export function checkState(state: QuantState): number {
  assertBlocksize(state.blocksize);
  const n = numelOf(state.shape);
  if (state.packed.length !== (n + 1) >> 1) {
    throw new RangeError(`packed has ${state.packed.length} bytes, expected ${(n + 1) >> 1} for ${n} elements`);
  }
  const nb = numBlocks(n, state.blocksize);
  const have = isNested(state.absmax) ? state.absmax.qabsmax.length : state.absmax.length;
  if (have !== nb) throw new RangeError(`absmax has ${have} entries, expected ${nb} blocks`);
  if (state.quantMap.length !== 16) throw new RangeError(`quantMap has ${state.quantMap.length} entries, expected 16`);
  return n;
}

/** Dequantize elements [start, end) of the flattened tensor into out[0 .. end-start). */
function dequantizeRange(state: QuantState, start: number, end: number, out: Float32Array): void {
  const { packed, quantMap, blocksize } = state;
  const firstBlock = Math.floor(start / blocksize);
  const lastBlock = end === start ? firstBlock : Math.floor((end - 1) / blocksize) + 1;
  const am = dequantizeAbsmax(state, firstBlock, lastBlock);
  for (let b = firstBlock; b < lastBlock; b++) {
    const scale = am[b - firstBlock];
    const lo = Math.max(start, b * blocksize);
    const hi = Math.min(end, (b + 1) * blocksize);
    for (let i = lo; i < hi; i++) {
      const byte = packed[i >> 1];
      // Float32Array stores round the exact double product once: a float32 multiply.
      out[i - start] = quantMap[i & 1 ? byte & 15 : byte >> 4] * scale;
    }
  }
}

/** Dequantize the whole tensor: code[q] * absmax[block], in float32 (flattened). */
export function dequantize4bit(state: QuantState): Float32Array {
  const n = checkState(state);
  const out = new Float32Array(n);
  dequantizeRange(state, 0, n, out);
  return out;
}

/**
 * Dequantize rows [rowStart, rowEnd) of a 2-D (or higher, rows = shape[0]) tensor into
 * `out` (length >= (rowEnd-rowStart)*cols), for blocked dequant-then-matmul.
 */
export function dequantizeRows(state: QuantState, rowStart: number, rowEnd: number, out?: Float32Array): Float32Array {
  const n = checkState(state);
  const rows = state.shape.length === 0 ? 1 : state.shape[0];
  const cols = rows === 0 ? 0 : n / rows;
  if (!(Number.isInteger(rowStart) && Number.isInteger(rowEnd) && 0 <= rowStart && rowStart <= rowEnd && rowEnd <= rows)) {
    throw new RangeError(`dequantizeRows: row range [${rowStart}, ${rowEnd}) is outside [0, ${rows})`);
  }
  const count = (rowEnd - rowStart) * cols;
  const dst = out ?? new Float32Array(count);
  if (dst.length < count) throw new RangeError(`dequantizeRows: out has ${dst.length} elements, needs ${count}`);
  dequantizeRange(state, rowStart * cols, rowEnd * cols, dst);
  return dst;
}

/**
 * Bytes of the per-tensor payload that scales with n: packed codes + absmax (float32,
 * or uint8 codes + float32 nested absmax). Constant-size tables (quant_map 64 B, nested
 * map 1 KiB, the offset and the JSON) are excluded, matching the bits-per-param formula.
 */
export function quantizedBytes(state: QuantState): number {
  const a = state.absmax;
  const scales = isNested(a) ? a.qabsmax.byteLength + a.nestedAbsmax.byteLength : a.byteLength;
  return state.packed.byteLength + scales;
}

/**
 * Storage bits per parameter for n elements (same accounting as quantizedBytes):
 * with DQ at blocksize 64, 4 + 8/64 + 32/(64*256) = 4.127 asymptotically; 4.5 without.
 */
export function bitsPerParam(n: number, options: { blocksize?: number; doubleQuant?: boolean } = {}): number {
  const blocksize = options.blocksize ?? 64;
  const doubleQuant = options.doubleQuant ?? true;
  assertBlocksize(blocksize);
  if (!(Number.isSafeInteger(n) && n > 0)) throw new RangeError(`bitsPerParam: n must be a positive integer, got ${n}`);
  const nb = numBlocks(n, blocksize);
  const bytes = ((n + 1) >> 1) + (doubleQuant ? nb + 4 * numBlocks(nb, NESTED_BLOCKSIZE) : 4 * nb);
  return (bytes * 8) / n;
}
