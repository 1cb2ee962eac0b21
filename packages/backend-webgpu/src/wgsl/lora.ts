/**
 * WGSL of the fused LoRA layer's matmuls (kernels/lora.ts). Each job is a reg4x4 tile of
 * C [M, N] (matmul.ts: an invocation keeps 4x4 of C in registers, operands read in place as
 * row / col / any layouts) with what the composite spent separate dispatches on folded in:
 *   - up to two K segments summed in one accumulator, each with its own scale
 *     (y = x Wᵀ + h Bᵀ; gx = gy W + mask ⊙ (gh A));
 *   - the dropout mask on an A load, a B load or the second segment's product, regenerated from
 *     the `dropout` kernel's stream (uniform_at: p(59..61)), threshold p(62), 1 / (1 - p) p(63);
 *   - a bias added on store;
 *   - two independent jobs in one dispatch: workgroups [0, tiles of job 0) run job 0, the rest job 1.
 * f32 only. Workgroups of 64 invocations, laid out per job as wx x (64 / wx).
 *
 * Parameters of job j at J = 32 j: 0 M, 1 N (also C's row stride), 2 tiles along N, 3 tiles,
 * 4 C base, 5 bias base, 6 row stride of the masked operand's index space; segment s at J + 8 + 8 s:
 * K, A base, sam, sak, B base, sbk, sbn, scale (f32 bits).
 */
import { type Layout, type OperandNames, loadA, loadB, operand } from "./matmul.ts";
import { Wgsl } from "./common.ts";

export const LORA_WG = 64;

export interface LoraSegShader {
  a: Layout;
  b: Layout;
  /** Where the dropout mask applies: A's elements [m, k], B's [k, n], or the product [m, n]. */
  mask?: "a" | "b" | "out";
}

export interface LoraJobShader {
  segs: LoraSegShader[];
  bias: boolean;
  /** N divisible by 4: store vec4 rows. */
  vecOut: boolean;
  wx: number;
}

const F32 = { dtype: "f32", nativeF16: false, naive: false } as const;

function fma(a: string, b: string): string {
  return [0, 1, 2, 3].map((i) => `acc${i} += ${a}${i}.x * ${b}0 + ${a}${i}.y * ${b}1 + ${a}${i}.z * ${b}2 + ${a}${i}.w * ${b}3;`).join("\n      ");
}

function segment(j: number, s: number, seg: LoraSegShader): string {
  const P = 32 * j + 8 + 8 * s;
  const A: OperandNames = { buf: `A${j}${s}`, o: "ao", s1: "sam", s2: "sak" };
  const B: OperandNames = { buf: `B${j}${s}`, o: "bo", s1: "sbk", s2: "sbn" };
  const maskA = seg.mask === "a" ? [0, 1, 2, 3].map((i) => `let m${i} = a${i} * keep4(r${i} * ms + k);`).join("\n      ") : "";
  const maskB = seg.mask === "b" ? [0, 1, 2, 3].map((i) => `let n${i} = b${i} * keep4((k + ${i}u) * ms + col0);`).join("\n      ") : "";
  const tailA = (i: number) => `${A.buf}1(ao + r${i} * sam + k * sak)${seg.mask === "a" ? ` * keep(r${i} * ms + k)` : ""}`;
  const tailB = `vec4<f32>(${[0, 1, 2, 3].map((c) => `${B.buf}1(bo + k * sbk + c${c} * sbn)`).join(", ")})${seg.mask === "b" ? " * keep4(k * ms + col0)" : ""}`;
  const out = seg.mask === "out" ? [0, 1, 2, 3].map((i) => `acc${i} *= keep4(r${i} * ms + col0);`).join("\n    ") : "";
  return `{
    acc0 = vec4<f32>(0.0); acc1 = vec4<f32>(0.0); acc2 = vec4<f32>(0.0); acc3 = vec4<f32>(0.0);
    let K = p(${P}u); let ao = p(${P + 1}u); let sam = p(${P + 2}u); let sak = p(${P + 3}u);
    let bo = p(${P + 4}u); let sbk = p(${P + 5}u); let sbn = p(${P + 6}u);
    let kv = K & ~3u;
    for (var k = 0u; k < kv; k += 4u) {
      ${loadA(seg.a, A)}
      ${maskA}
      ${loadB(seg.b, B)}
      ${maskB}
      ${fma(seg.mask === "a" ? "m" : "a", seg.mask === "b" ? "n" : "b")}
    }
    for (var k = kv; k < K; k++) {
      let bk = ${tailB};
      ${[0, 1, 2, 3].map((i) => `acc${i} += ${tailA(i)} * bk;`).join("\n      ")}
    }
    ${out}
    let sc = pf(${P + 7}u);
    t0 += acc0 * sc; t1 += acc1 * sc; t2 += acc2 * sc; t3 += acc3 * sc;
  }`;
}

function job(j: number, js: LoraJobShader): string {
  const J = 32 * j;
  const wy = LORA_WG / js.wx;
  const bias = js.bias
    ? `let bv = vec4<f32>(bias${j}1(p(${J + 5}u) + c0), bias${j}1(p(${J + 5}u) + c1), bias${j}1(p(${J + 5}u) + c2), bias${j}1(p(${J + 5}u) + c3));
  t0 += bv; t1 += bv; t2 += bv; t3 += bv;`
    : "";
  const store = js.vecOut
    ? [0, 1, 2, 3].map((i) => `if (r${i} < mEnd) { C${j}[(co + r${i} * nEnd + col0) >> 2u] = t${i}; }`).join("\n  ")
    : [0, 1, 2, 3]
        .map((i) => `if (r${i} < mEnd) { for (var q = 0u; q < 4u; q++) { if (col0 + q < nEnd) { C${j}[co + r${i} * nEnd + col0 + q] = t${i}[q]; } } }`)
        .join("\n  ");
  return `fn job${j}(g: u32, li: u32) {
  let mEnd = p(${J}u);
  let nEnd = p(${J + 1}u);
  let tn = g % p(${J + 2}u);
  let tm = g / p(${J + 2}u);
  let row0 = (tm * ${wy}u + li / ${js.wx}u) * 4u;
  let col0 = (tn * ${js.wx}u + li % ${js.wx}u) * 4u;
  if (row0 >= mEnd || col0 >= nEnd) { return; }
  let co = p(${J + 4}u);
  let ms = p(${J + 6}u);
  let r0 = row0; let r1 = row0 + 1u; let r2 = row0 + 2u; let r3 = row0 + 3u;
  let c0 = col0; let c1 = col0 + 1u; let c2 = col0 + 2u; let c3 = col0 + 3u;
  var acc0: vec4<f32>; var acc1: vec4<f32>; var acc2: vec4<f32>; var acc3: vec4<f32>;
  var t0 = vec4<f32>(0.0); var t1 = vec4<f32>(0.0); var t2 = vec4<f32>(0.0); var t3 = vec4<f32>(0.0);
  ${js.segs.map((s, i) => segment(j, i, s)).join("\n  ")}
  ${bias}
  ${store}
}`;
}

/** The shader for `jobs` (one or two), bindings in order: per job C, then A and B per segment, then the bias. */
export function loraWgsl(jobs: LoraJobShader[]): string {
  const w = new Wgsl().params(64).need("hash");
  let binding = 1;
  const decls: string[] = [];
  jobs.forEach((js, j) => {
    decls.push(`@group(0) @binding(${binding++}) var<storage, read_write> C${j}: array<${js.vecOut ? "vec4<f32>" : "f32"}>;`);
    js.segs.forEach((_, s) => {
      decls.push(operand(`A${j}${s}`, binding++, F32));
      decls.push(operand(`B${j}${s}`, binding++, F32));
    });
    if (js.bias) decls.push(operand(`bias${j}`, binding++, F32));
  });
  w.decl(decls.join("\n"));
  w.decl(`fn keep(i: u32) -> f32 { return select(0.0, pf(63u), uniform_at(i) >= pf(62u)); }
fn keep4(i: u32) -> vec4<f32> { return vec4<f32>(keep(i), keep(i + 1u), keep(i + 2u), keep(i + 3u)); }`);
  jobs.forEach((js, j) => w.decl(job(j, js)));
  const dispatch = jobs.length === 1 ? "job0(g, li);" : "if (g < p(3u)) { job0(g, li); } else { job1(g - p(3u), li); }";
  return w.build(`@compute @workgroup_size(${LORA_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let g = wid.y * nwg.x + wid.x;
  if (g >= p(3u) + ${jobs.length === 2 ? "p(35u)" : "0u"}) { return; }
  ${dispatch}
}`);
}
