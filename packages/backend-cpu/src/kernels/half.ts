/**
 * Whole-array f16/bf16 codecs, bit-identical to @lowrank/tensor's per-element f16BitsToF32,
 * f32ToF16Bits, bf16BitsToF32 and f32ToBf16Bits (round to nearest even), without a function
 * call and a scratch-buffer round trip per element.
 */
import { f16BitsToF32 } from "@lowrank/tensor";

export type Half = "f16" | "bf16";

/** The WASM SIMD bf16 codec (wasm/elementwise.ts), set by the first CPU backend that has one. */
interface Bf16Codec {
  decodeBf16(src: Uint16Array, out: Float32Array): boolean;
  encodeBf16(src: Float32Array, out: Uint16Array): boolean;
}
let codec: Bf16Codec | null = null;

/** Route large bf16 conversions through `c` (stateless, synchronous: any backend's instance serves). */
export function useBf16Codec(c: Bf16Codec | null): void {
  codec ??= c;
}

export const isHalf = (dtype: string): dtype is Half => dtype === "f16" || dtype === "bf16";

let f16Table: Float32Array | null = null;
/** Every f16 bit pattern decoded (256 KiB, built on first use). */
function f16Values(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

/** `out` (default fresh) receives the decoded values; the backend passes a recycled array. */
export function decodeHalf(dtype: Half, src: Uint16Array, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const n = src.length;
  if (dtype === "f16") {
    const t = f16Values();
    for (let i = 0; i < n; i++) out[i] = t[src[i]];
  } else if (!codec?.decodeBf16(src, out)) {
    const bits = new Int32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
  }
  return out;
}

export function encodeHalf(dtype: Half, src: Float32Array): Uint16Array {
  const n = src.length;
  const out = new Uint16Array(n);
  // Signed bits stay small integers in the JIT; the arithmetic is the same modulo 2^32.
  const bits = new Int32Array(src.buffer, src.byteOffset, n);
  if (dtype === "bf16") {
    if (codec?.encodeBf16(src, out)) return out;
    for (let i = 0; i < n; i++) {
      const x = bits[i];
      out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  } else {
    for (let i = 0; i < n; i++) out[i] = f16Bits(bits[i]);
  }
  return out;
}

/** f32 bit pattern -> f16 bit pattern; the same steps as f32ToF16Bits. */
function f16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 112;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
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
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}
