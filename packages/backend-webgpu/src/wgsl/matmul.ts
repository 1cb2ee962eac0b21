/**
 * Matmul WGSL. The tiled kernel follows the measurement in shared/notes/environment.md §3: on
 * llvmpipe, workgroup memory and barriers cost more than they save, so each invocation keeps a
 * 4x4 block of C in registers and reads A and B with vec4 loads straight from storage
 * ("reg4x4": 8 vec4 loads feed 64 FMAs). Every transposition is a load variant, never a copy:
 *   A "row": A[m, k..k+3] contiguous (sak = 1)      A "col": A[m..m+3, k] contiguous (sam = 1, A is a transposed view)
 *   B "row": B[k, n..n+3] contiguous (sbn = 1)      B "col": B[k..k+3, n] contiguous (sbk = 1, e.g. x @ W.T)
 *   "any": scalar loads with arbitrary strides.
 * `col` loads arrive transposed and are flipped in registers (mat4x4 transpose).
 *
 * Parameters (u32): 0 row end, 1 col end, 2 K, 3 batch rank, 4 tiles along N, 5 tiles along M,
 * 6 workgroups, 7 first row, 8 first col, 9 N (row stride of C), 10 A base, 11 sam, 12 sak,
 * 13 B base, 14 sbk, 15 sbn, 16 C base; 20.. batch extents, 28.. batch start, 36.. A batch
 * strides, 44.. B batch strides, 52.. C batch strides.
 */
import type { DType } from "@lowrank/tensor";
import { Wgsl } from "./common.ts";

/**
 * The reg4x4 tile's common parts (also used by kernels/matmul4bit.ts): the 4 rows and 4 columns an
 * invocation owns and its accumulators, then one k-step of 4 (a0..a3 rows of A, b0..b3 rows of B).
 */
export const REG4X4_SETUP = `let r0 = row0;
  let r1 = row0 + 1u;
  let r2 = row0 + 2u;
  let r3 = row0 + 3u;
  let c0 = col0;
  let c1 = col0 + 1u;
  let c2 = col0 + 2u;
  let c3 = col0 + 3u;
  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);`;
export const REG4X4_FMA = `acc0 += a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
    acc1 += a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
    acc2 += a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
    acc3 += a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;`;

export type Layout = "row" | "col" | "any";

export interface MatmulShader {
  a: Layout;
  b: Layout;
  dtype: DType;
  /** Read halves through shader-f16 (array<vec4<f16>>) instead of unpacking u32 words. */
  nativeF16: boolean;
  /** C row stride divisible by 4: store vec4 rows. */
  vecOut: boolean;
  wx: number;
  wy: number;
  naive: boolean;
}

/** Element type of an operand binding and its vec4 / scalar loaders. */
export function operand(name: string, binding: number, s: Pick<MatmulShader, "dtype" | "nativeF16" | "naive">): string {
  const decl = (t: string) => `@group(0) @binding(${binding}) var<storage, read> ${name}b: array<${t}>;`;
  if (s.dtype === "f16" && s.nativeF16) {
    return `${decl("vec4<f16>")}
fn ${name}4(o: u32) -> vec4<f32> { return vec4<f32>(${name}b[o >> 2u]); }
fn ${name}1(o: u32) -> f32 { return f32(${name}b[o >> 2u][o & 3u]); }`;
  }
  if (s.dtype === "f16") {
    return `${decl("vec2<u32>")}
fn ${name}4(o: u32) -> vec4<f32> { let v = ${name}b[o >> 2u]; return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)); }
fn ${name}1(o: u32) -> f32 { return unpack2x16float(${name}b[o >> 2u][(o >> 1u) & 1u])[o & 1u]; }`;
  }
  if (s.dtype === "bf16") {
    return `${decl("vec2<u32>")}
fn ${name}4(o: u32) -> vec4<f32> {
  let v = ${name}b[o >> 2u];
  return vec4<f32>(bitcast<f32>(v.x << 16u), bitcast<f32>(v.x & 0xffff0000u), bitcast<f32>(v.y << 16u), bitcast<f32>(v.y & 0xffff0000u));
}
fn ${name}1(o: u32) -> f32 { let w = ${name}b[o >> 2u][(o >> 1u) & 1u]; return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (o & 1u) == 1u)); }`;
  }
  if (s.naive) return `${decl("f32")}\nfn ${name}1(o: u32) -> f32 { return ${name}b[o]; }`;
  return `${decl("vec4<f32>")}
fn ${name}4(o: u32) -> vec4<f32> { return ${name}b[o >> 2u]; }
fn ${name}1(o: u32) -> f32 { return ${name}b[o >> 2u][o & 3u]; }`;
}

/** Names of an operand in the generated code: its loaders (`A4`, `A1`), base offset and strides. */
export interface OperandNames {
  buf: string;
  o: string;
  /** Stride along A's rows (m) or B's rows (k). */
  s1: string;
  /** Stride along A's columns (k) or B's columns (n). */
  s2: string;
}
const A_NAMES: OperandNames = { buf: "A", o: "ao", s1: "sam", s2: "sak" };
const B_NAMES: OperandNames = { buf: "B", o: "bo", s1: "sbk", s2: "sbn" };

/** The four A rows a0..a3 (vec4 over k..k+3) for the current k. */
export function loadA(l: Layout, n: OperandNames = A_NAMES): string {
  const { buf, o, s1: sam, s2: sak } = n;
  if (l === "row") return [0, 1, 2, 3].map((i) => `let a${i} = ${buf}4(${o} + r${i} * ${sam} + k);`).join("\n    ");
  if (l === "col") {
    return `let at = transpose(mat4x4<f32>(${buf}4(${o} + k * ${sak} + row0), ${buf}4(${o} + (k + 1u) * ${sak} + row0), ${buf}4(${o} + (k + 2u) * ${sak} + row0), ${buf}4(${o} + (k + 3u) * ${sak} + row0)));
    let a0 = at[0]; let a1 = at[1]; let a2 = at[2]; let a3 = at[3];`;
  }
  return [0, 1, 2, 3]
    .map(
      (i) =>
        `let a${i} = vec4<f32>(${buf}1(${o} + r${i} * ${sam} + k * ${sak}), ${buf}1(${o} + r${i} * ${sam} + (k + 1u) * ${sak}), ${buf}1(${o} + r${i} * ${sam} + (k + 2u) * ${sak}), ${buf}1(${o} + r${i} * ${sam} + (k + 3u) * ${sak}));`,
    )
    .join("\n    ");
}

/** The four B rows b0..b3 (vec4 over n..n+3) for k..k+3. */
export function loadB(l: Layout, n: OperandNames = B_NAMES): string {
  const { buf, o, s1: sbk, s2: sbn } = n;
  if (l === "row") return [0, 1, 2, 3].map((j) => `let b${j} = ${buf}4(${o} + (k + ${j}u) * ${sbk} + col0);`).join("\n    ");
  if (l === "col") {
    return `let bt = transpose(mat4x4<f32>(${buf}4(${o} + c0 * ${sbn} + k), ${buf}4(${o} + c1 * ${sbn} + k), ${buf}4(${o} + c2 * ${sbn} + k), ${buf}4(${o} + c3 * ${sbn} + k)));
    let b0 = bt[0]; let b1 = bt[1]; let b2 = bt[2]; let b3 = bt[3];`;
  }
  return [0, 1, 2, 3]
    .map(
      (j) =>
        `let b${j} = vec4<f32>(${buf}1(${o} + (k + ${j}u) * ${sbk} + c0 * ${sbn}), ${buf}1(${o} + (k + ${j}u) * ${sbk} + c1 * ${sbn}), ${buf}1(${o} + (k + ${j}u) * ${sbk} + c2 * ${sbn}), ${buf}1(${o} + (k + ${j}u) * ${sbk} + c3 * ${sbn}));`,
    )
    .join("\n    ");
}

const PROLOGUE = `  let g = wid.y * nwg.x + wid.x;
  if (g >= p(6u)) { return; }
  let tn = g % p(4u);
  let rest = g / p(4u);
  let tm = rest % p(5u);
  var bi = rest / p(5u);
  var ao = p(10u);
  var bo = p(13u);
  var oo = p(16u);
  for (var d = i32(p(3u)) - 1; d >= 0; d--) {
    let ud = u32(d);
    let ext = p(20u + ud);
    let c = bi % ext + p(28u + ud);
    bi = bi / ext;
    ao += c * p(36u + ud);
    bo += c * p(44u + ud);
    oo += c * p(52u + ud);
  }
  let mEnd = p(0u);
  let nEnd = p(1u);
  let K = p(2u);
  let N = p(9u);
  let sam = p(11u);
  let sak = p(12u);
  let sbk = p(14u);
  let sbn = p(15u);`;

export function matmulWgsl(s: MatmulShader): string {
  const w = new Wgsl().params(64);
  const out = s.vecOut && !s.naive ? "vec4<f32>" : "f32";
  const head = [
    s.dtype === "f16" && s.nativeF16 ? "enable f16;" : "",
    w.build(""),
    `@group(0) @binding(1) var<storage, read_write> C: array<${out}>;`,
    operand("A", 2, s),
    operand("B", 3, s),
  ].join("\n");
  const sig = `@compute @workgroup_size(${s.wx}, ${s.wy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {`;
  if (s.naive) {
    return `${head}
${sig}
${PROLOGUE}
  let row = p(7u) + tm * ${s.wy}u + lid.y;
  let col = p(8u) + tn * ${s.wx}u + lid.x;
  if (row >= mEnd || col >= nEnd) { return; }
  var acc = 0.0;
  for (var k = 0u; k < K; k++) { acc += A1(ao + row * sam + k * sak) * B1(bo + k * sbk + col * sbn); }
  C[oo + row * N + col] = acc;
}`;
  }
  const store = s.vecOut
    ? [0, 1, 2, 3].map((i) => `if (row0 + ${i}u < mEnd) { C[(oo + (row0 + ${i}u) * N + col0) >> 2u] = acc${i}; }`).join("\n  ")
    : [0, 1, 2, 3]
        .map(
          (i) => `if (row0 + ${i}u < mEnd) { for (var j = 0u; j < 4u; j++) { if (col0 + j < nEnd) { C[oo + (row0 + ${i}u) * N + col0 + j] = acc${i}[j]; } } }`,
        )
        .join("\n  ");
  return `${head}
${sig}
${PROLOGUE}
  let row0 = p(7u) + (tm * ${s.wy}u + lid.y) * 4u;
  let col0 = p(8u) + (tn * ${s.wx}u + lid.x) * 4u;
  if (row0 >= mEnd || col0 >= nEnd) { return; }
  // Rows/cols past the end load whatever the (bounds-checked) binding holds and are never stored.
  ${REG4X4_SETUP}
  let kv = K & ~3u;
  for (var k = 0u; k < kv; k += 4u) {
    ${loadA(s.a)}
    ${loadB(s.b)}
    ${REG4X4_FMA}
  }
  for (var k = kv; k < K; k++) {
    let bk = vec4<f32>(B1(bo + k * sbk + c0 * sbn), B1(bo + k * sbk + c1 * sbn), B1(bo + k * sbk + c2 * sbn), B1(bo + k * sbk + c3 * sbn));
    acc0 += A1(ao + r0 * sam + k * sak) * bk;
    acc1 += A1(ao + r1 * sam + k * sak) * bk;
    acc2 += A1(ao + r2 * sam + k * sak) * bk;
    acc3 += A1(ao + r3 * sam + k * sak) * bk;
  }
  ${store}
}`;
}
