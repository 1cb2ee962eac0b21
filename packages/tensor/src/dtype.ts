/** Element types. f16 and bf16 are stored as raw 16-bit patterns (Uint16Array) on hosts without native halves. */
export type DType = "f32" | "f16" | "bf16" | "i32" | "u8";

export const DTYPES: readonly DType[] = ["f32", "f16", "bf16", "i32", "u8"];

export type HostArray = Float32Array | Uint16Array | Int32Array | Uint8Array;

export function byteSize(dtype: DType): number {
  switch (dtype) {
    case "f32":
    case "i32":
      return 4;
    case "f16":
    case "bf16":
      return 2;
    case "u8":
      return 1;
  }
}

export function isFloat(dtype: DType): boolean {
  return dtype === "f32" || dtype === "f16" || dtype === "bf16";
}

/** Allocate a zeroed host array holding `n` elements of `dtype` in its storage form. */
export function hostArray(dtype: DType, n: number): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(n);
    case "f16":
    case "bf16":
      return new Uint16Array(n);
    case "i32":
      return new Int32Array(n);
    case "u8":
      return new Uint8Array(n);
  }
}

/** Wrap raw little-endian bytes as the storage array of `dtype` (copies when misaligned). */
export function viewBytes(dtype: DType, bytes: Uint8Array): HostArray {
  const size = byteSize(dtype);
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(`viewBytes: ${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  }
  const n = bytes.byteLength / size;
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case "f32":
      return new Float32Array(aligned.buffer, aligned.byteOffset, n);
    case "f16":
    case "bf16":
      return new Uint16Array(aligned.buffer, aligned.byteOffset, n);
    case "i32":
      return new Int32Array(aligned.buffer, aligned.byteOffset, n);
    case "u8":
      return aligned;
  }
}

// ---- half-precision conversions (round to nearest even, like hardware casts) ----

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

export function f32ToF16Bits(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow -> signed zero
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++; // may carry into exponent: correct
  return sign | half;
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

export function f32ToBf16Bits(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return ((x >>> 16) | 0x40) & 0xffff; // quiet nan
  const lsb = (x >>> 16) & 1;
  return ((x + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function bf16BitsToF32(b: number): number {
  u32buf[0] = b << 16;
  return f32buf[0];
}

/** Decode a storage array into f32 values (copy for f16/bf16/ints, same array for f32). */
export function toF32(dtype: DType, src: HostArray): Float32Array {
  if (dtype === "f32") return src as Float32Array;
  const out = new Float32Array(src.length);
  if (dtype === "f16") for (let i = 0; i < src.length; i++) out[i] = f16BitsToF32(src[i]);
  else if (dtype === "bf16") for (let i = 0; i < src.length; i++) out[i] = bf16BitsToF32(src[i]);
  else for (let i = 0; i < src.length; i++) out[i] = src[i];
  return out;
}

/** Encode f32 values into the storage form of `dtype` (ints truncate toward zero, u8 wraps like a C cast). */
export function fromF32(dtype: DType, src: Float32Array | number[]): HostArray {
  const n = src.length;
  const out = hostArray(dtype, n);
  if (dtype === "f16") for (let i = 0; i < n; i++) out[i] = f32ToF16Bits(src[i]);
  else if (dtype === "bf16") for (let i = 0; i < n; i++) out[i] = f32ToBf16Bits(src[i]);
  else for (let i = 0; i < n; i++) out[i] = src[i];
  return out;
}
