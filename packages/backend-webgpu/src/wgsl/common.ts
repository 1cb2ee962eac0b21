/**
 * The small typed WGSL builder shared by the generated kernels (elementwise, reduce, indexing,
 * fused). Storage layout: every tensor buffer is bound as `array<u32>`; 4-byte dtypes take one
 * word per element, f16/bf16 two elements per word (low half first) and u8 four (low byte first),
 * so one invocation always owns whole words and never races a neighbour.
 *
 * Values are computed in a "natural" type: f32 for f32/f16/bf16, i32 for i32/u8. Halves are
 * converted with bit operations (round to nearest even, overflow to inf), identical to the
 * host's f32ToF16Bits/f32ToBf16Bits, instead of WGSL's f16() whose rounding is implementation-defined.
 */
import type { DType } from "@lowrank/tensor";

export type Nat = "f32" | "i32";

/** Elements per 32-bit storage word. */
export const EPW: Record<DType, number> = { f32: 1, i32: 1, f16: 2, bf16: 2, u8: 4 };
export const BITS: Record<DType, number> = { f32: 32, i32: 32, f16: 16, bf16: 16, u8: 8 };

export function natOf(d: DType): Nat {
  return d === "i32" || d === "u8" ? "i32" : "f32";
}

/** Helper functions, emitted only when a kernel uses them. */
const LIB: Record<string, string> = {
  isnan: /* wgsl */ `
fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }`,
  // Runtime (private) bit patterns: a const-expression that evaluates to NaN/inf is a shader-creation error.
  nan: /* wgsl */ `
var<private> NAN_BITS: u32 = 0x7fc00000u;
fn nan_f32() -> f32 { return bitcast<f32>(NAN_BITS); }`,
  inf: /* wgsl */ `
var<private> INF_BITS: u32 = 0x7f800000u;
fn inf_f32() -> f32 { return bitcast<f32>(INF_BITS); }`,
  f16dec: /* wgsl */ `
fn f16_dec(h: u32) -> f32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8;
    return select(v, -v, s != 0u);
  }
  if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | (m << 13u)); }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}`,
  f16enc: /* wgsl */ `
fn f16_enc(v: f32) -> u32 {
  let x = bitcast<u32>(v);
  let sign = (x >> 16u) & 0x8000u;
  let ex = (x >> 23u) & 0xffu;
  var mant = x & 0x7fffffu;
  if (ex == 0xffu) { return sign | 0x7c00u | select(0u, 0x200u, mant != 0u); }
  let e = i32(ex) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  if (e <= 0) {
    if (e < -10) { return sign; }
    mant = mant | 0x800000u;
    let shift = u32(14 - e);
    var half = mant >> shift;
    let rem = mant & ((1u << shift) - 1u);
    let mid = 1u << (shift - 1u);
    if (rem > mid || (rem == mid && (half & 1u) != 0u)) { half = half + 1u; }
    return sign | half;
  }
  var half = (u32(e) << 10u) | (mant >> 13u);
  let rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u) != 0u)) { half = half + 1u; }
  return sign | half;
}`,
  bf16enc: /* wgsl */ `
fn bf16_enc(v: f32) -> u32 {
  let x = bitcast<u32>(v);
  if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu) != 0u) { return ((x >> 16u) | 0x40u) & 0xffffu; }
  return ((x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u) & 0xffffu;
}`,
  // f32 -> i32 like JS (Math.trunc(v) || 0) stored into an Int32Array: truncate, wrap mod 2^32, NaN/inf -> 0.
  f2i: /* wgsl */ `
fn f2i(v: f32) -> i32 {
  let b = bitcast<u32>(v);
  let ex = (b >> 23u) & 0xffu;
  if (ex == 0xffu) { return 0; }
  if (ex < 158u) { return i32(v); }
  let s = ex - 150u;
  if (s >= 32u) { return 0; }
  let r = ((b & 0x7fffffu) | 0x800000u) << s;
  return bitcast<i32>(select(r, 0u - r, (b >> 31u) != 0u));
}`,
  // tanh via exp of -2|x| (no overflow, no inf/inf); the odd series near 0 keeps relative accuracy.
  tanh: /* wgsl */ `
fn tanh_(x: f32) -> f32 {
  let a = abs(x);
  if (a < 0.0625) { let x2 = x * x; return x * (1.0 + x2 * (-0.33333334 + x2 * (0.13333334 + x2 * -0.053968254))); }
  let e = exp(-2.0 * a);
  let t = (1.0 - e) / (1.0 + e);
  return select(t, -t, x < 0.0);
}`,
  sigmoid: /* wgsl */ `
fn sigmoid_(x: f32) -> f32 {
  if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
  let e = exp(x);
  return e / (1.0 + e);
}`,
  // pow with JS Math.pow semantics for negative bases, zeros and integer exponents.
  pow: /* wgsl */ `
fn pow_(x: f32, y: f32) -> f32 {
  if (y == 0.0) { return 1.0; }
  if (is_nan(x) || is_nan(y)) { return nan_f32(); }
  if (y == 1.0) { return x; }
  if (y == 2.0) { return x * x; }
  let ay = abs(y);
  let yint = floor(y) == y;
  let odd = yint && ay < 16777216.0 && (u32(ay) & 1u) == 1u;
  if (x == 0.0) {
    if (y > 0.0) { return select(0.0, x, odd); }
    return select(inf_f32(), select(inf_f32(), -inf_f32(), bitcast<u32>(x) != 0u), odd);
  }
  if (x < 0.0) {
    if (!yint) { return nan_f32(); }
    let r = exp2(y * log2(-x));
    return select(r, -r, odd);
  }
  return exp2(y * log2(x));
}`,
  nanmax: /* wgsl */ `
fn nanmax(a: f32, b: f32) -> f32 { if (is_nan(a) || is_nan(b)) { return nan_f32(); } return max(a, b); }`,
  nanmin: /* wgsl */ `
fn nanmin(a: f32, b: f32) -> f32 { if (is_nan(a) || is_nan(b)) { return nan_f32(); } return min(a, b); }`,
  // lowbias32 of random.ts; uniform_at(i) reads the stream from p(59) hash32(seed), p(60..61) the 64-bit offset.
  hash: /* wgsl */ `
fn hash32(v: u32) -> u32 {
  var x = v;
  x = x ^ (x >> 16u);
  x = x * 0x7feb352du;
  x = x ^ (x >> 15u);
  x = x * 0x846ca68bu;
  x = x ^ (x >> 16u);
  return x;
}
fn uniform_at(i: u32) -> f32 {
  let lo = p(60u) + i;
  let hi = p(61u) + select(0u, 1u, lo < i);
  let h = hash32((p(59u) ^ lo) + hi * 0x9e3779b9u);
  return f32(h >> 8u) / 16777216.0;
}`,
  ipow: /* wgsl */ `
fn ipow(a: i32, b: i32) -> i32 {
  if (b < 0) { return select(0, select(1, select(-1, 1, (b & 1) == 0), a == -1), a == 1 || a == -1); }
  var r = 1;
  var base = a;
  var e = u32(b);
  loop {
    if ((e & 1u) != 0u) { r = r * base; }
    e = e >> 1u;
    if (e == 0u) { break; }
    base = base * base;
  }
  return r;
}`,
};

/** Helpers a helper needs. */
const DEPS: Record<string, string[]> = { pow: ["isnan", "nan", "inf"], nanmax: ["isnan", "nan"], nanmin: ["isnan", "nan"] };

/** Collects what a kernel needs and emits it once, in a stable order. */
export class Wgsl {
  private readonly helpers = new Set<string>();
  private readonly decls: string[] = [];

  need(...names: string[]): this {
    for (const n of names) {
      for (const d of DEPS[n] ?? []) this.need(d);
      if (!LIB[n]) throw new Error(`wgsl: unknown helper ${n}`);
      this.helpers.add(n);
    }
    return this;
  }

  decl(code: string): this {
    this.decls.push(code);
    return this;
  }

  /** `var<uniform> P` of `words` u32 (multiple of 4) plus the accessor p(i). */
  params(words: number): this {
    return this.decl(`@group(0) @binding(0) var<uniform> P: array<vec4<u32>, ${words / 4}>;
fn p(i: u32) -> u32 { return P[i >> 2u][i & 3u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(p(i)); }`);
  }

  /** A storage binding over u32 words. */
  buffer(binding: number, name: string, write: boolean): this {
    return this.decl(`@group(0) @binding(${binding}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<u32>;`);
  }

  /** The shared error flags (last binding of kernels that validate indices). */
  flags(binding: number): this {
    return this.decl(`@group(0) @binding(${binding}) var<storage, read_write> flags: array<atomic<u32>>;`);
  }

  /** `fn ld_<name>(o: u32) -> nat` reading element `o` (relative to the binding) in its natural type. */
  loader(name: string, dtype: DType): this {
    return this.decl(`fn ld_${name}(o: u32) -> ${natOf(dtype)} { return ${this.decode(dtype, this.field(name, dtype, "o"))}; }`);
  }

  /** `fn bits_<name>(o: u32) -> u32`: the raw storage field of element `o` (copies keep every bit). */
  bitsLoader(name: string, dtype: DType): this {
    return this.decl(`fn bits_${name}(o: u32) -> u32 { return ${this.field(name, dtype, "o")}; }`);
  }

  /** Expression of the raw field of element `o` in buffer `name`. */
  field(name: string, dtype: DType, o: string): string {
    const epw = EPW[dtype];
    if (epw === 1) return `${name}[${o}]`;
    const shift = epw === 2 ? 1 : 2;
    return `extractBits(${name}[(${o}) >> ${shift}u], ((${o}) & ${epw - 1}u) * ${BITS[dtype]}u, ${BITS[dtype]}u)`;
  }

  /** Natural value of a raw field. */
  decode(dtype: DType, bits: string): string {
    switch (dtype) {
      case "f32":
        return `bitcast<f32>(${bits})`;
      case "i32":
        return `bitcast<i32>(${bits})`;
      case "u8":
        return `i32(${bits})`;
      case "bf16":
        return `bitcast<f32>((${bits}) << 16u)`;
      case "f16":
        this.need("f16dec");
        return `f16_dec(${bits})`;
    }
  }

  /** Raw field (low bits of a u32) of a natural value. */
  encode(dtype: DType, v: string): string {
    switch (dtype) {
      case "f32":
        return `bitcast<u32>(${v})`;
      case "i32":
        return `bitcast<u32>(${v})`;
      case "u8":
        return `(bitcast<u32>(${v}) & 0xffu)`;
      case "f16":
        this.need("f16enc");
        return `f16_enc(${v})`;
      case "bf16":
        this.need("bf16enc");
        return `bf16_enc(${v})`;
    }
  }

  /** Convert a natural value of dtype `from` to the natural type of `to` (cast semantics of the CPU backend). */
  convert(from: DType, to: DType, v: string): string {
    const a = natOf(from);
    const b = natOf(to);
    if (a === b) return v;
    if (b === "f32") return `f32(${v})`;
    this.need("f2i");
    return `f2i(${v})`;
  }

  /** The standard entry point: 1-D workgroups over a folded 2-D grid; `unit` is the linear invocation id. */
  static main(wg: number, body: string): string {
    return `@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let group = wid.y * nwg.x + wid.x;
  let unit = group * ${wg}u + lid;
${body}
}`;
  }

  build(main: string): string {
    const lib = [...this.helpers].sort().map((h) => LIB[h].trim());
    return [...lib, ...this.decls, main].join("\n");
  }
}

/** Workgroup sum and max of one f32 per invocation (a `wg`-wide tree in workgroup memory), for row and multi-tensor reductions. */
export function wgReduce(wg: number): string {
  return /* wgsl */ `
var<workgroup> red: array<f32, ${wg}>;
fn wg_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let t = red[0];
  workgroupBarrier();
  return t;
}
fn wg_max(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let t = red[0];
  workgroupBarrier();
  return t;
}`;
}
