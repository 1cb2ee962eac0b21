/**
 * FusedKernels.matmul4bit: y = x·Wᵀ (forward) or x·W (input gradient) with W [O, I] left packed
 * in bitsandbytes' layout (4-bit codes two per byte, high nibble first; f32 absmax per block, or
 * u8 absmax codes resolved through the nested table in the kernel). Nothing dense is ever
 * written: each invocation decodes the W values its 4x4 register tile needs straight from the
 * packed words (the reg4x4 scheme of wgsl/matmul.ts, which beats workgroup-memory tiles on
 * llvmpipe) and accumulates in f32. One dispatch per binding-sized box (plus the cast of a half
 * result), whatever the double quantization.
 *
 * Every W-side buffer is addressed by e, the flat element index o*I + i of W: code nibble
 * pb + e, block e / bs, nested block e / (bs * nbs). The planner sees them as accesses over e
 * with "elements per word" = 8 (nibbles), bs (f32 absmax), 4 bs (u8 codes) and bs nbs (nested
 * absmax), so a weight too big for one binding is split like any other operand.
 *
 * Two decoders: "q4" reads the 4 codes of k..k+3 (forward) or n..n+3 (gradient) from one half
 * word with one scale (needs I % 4 == 0, an even packed offset and bs % 4 == 0: every real layer);
 * "any" decodes element by element (odd shapes, blocks and tails anywhere). The forward with
 * I % 8 == 0 takes whole words instead, 8 k per step (one word and one scale per column).
 *
 * Parameters (u32): 0 row end, 1 col end, 2 K, 3 I, 4 tiles along N, 5 tiles along M,
 * 6 workgroups, 7 first row, 8 first col, 9 N, 10 x base, 11 y base, 12 nibble base,
 * 13 absmax base, 14 nested absmax base, 15 bs, 16 nbs (log2 of each when both are powers of two), 17 nested offset (f32), 18 code base,
 * 19 nested code base, 20 k end, 21 k start, 22 add to y (a later K chunk).
 */
import type { Quant4bitInputs } from "@lowrank/tensor";
import { EPW, Wgsl } from "../wgsl/common.ts";
import { REG4X4_FMA, REG4X4_SETUP } from "../wgsl/matmul.ts";
import { type GpuInput, type GpuStorage, type KernelContext, bindWords } from "./context.ts";
import { finish, fullKernel } from "./elementwise.ts";
import { type Access, type Box, planBoxes } from "./strided.ts";
import { WebGpuLimitError } from "../errors.ts";

interface Shader {
  transpose: boolean;
  /** "q4": a half word per 4 elements along the contiguous axis of W; "any": per element. */
  decode: "q4" | "any";
  xdtype: "f32" | "f16";
  /** x rows start on vec4 boundaries (K % 4 == 0, offset % 4 == 0): vec4 loads. */
  xvec: boolean;
  nested: boolean;
  /** Block sizes are powers of two (bnb's always are): block indices by shifts, not u32 divisions. */
  pow2: boolean;
  /** Forward with I % 8 == 0 (and a word-aligned packed offset): whole words, 8 k per step. */
  q8: boolean;
  /** N % 4 == 0: vec4 stores. */
  vecOut: boolean;
  wx: number;
  wy: number;
}

const isPow2 = (v: number) => Number.isSafeInteger(v) && v > 0 && (v & (v - 1)) === 0;
const pow2ceil = (x: number) => 2 ** Math.ceil(Math.log2(Math.max(1, x)));

function xOperand(s: Shader): string {
  // Halves come as vec2<u32> (4 halves) and widen exactly through unpack2x16float.
  if (s.xdtype === "f16") {
    return `@group(0) @binding(2) var<storage, read> Xb: array<vec2<u32>>;
fn X4(o: u32) -> vec4<f32> { let v = Xb[o >> 2u]; return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)); }
fn X1(o: u32) -> f32 { return unpack2x16float(Xb[o >> 2u][(o >> 1u) & 1u])[o & 1u]; }`;
  }
  return `@group(0) @binding(2) var<storage, read> Xb: array<vec4<f32>>;
fn X4(o: u32) -> vec4<f32> { return Xb[o >> 2u]; }
fn X1(o: u32) -> f32 { return Xb[o >> 2u][o & 3u]; }`;
}

/** Scale of block b: the f32 absmax, or f32(f32(ncode[q] * nabsmax[b / nbs]) + offset). */
function scaleFn(nested: boolean, pow2: boolean): string {
  if (!nested) return `fn sc(b: u32) -> f32 { return bitcast<f32>(AM[p(13u) + b]); }`;
  return `@group(0) @binding(6) var<storage, read> NA: array<f32>;
@group(0) @binding(7) var<storage, read> NC: array<f32>;
fn sc(b: u32) -> f32 {
  let a = p(13u) + b;
  let q = extractBits(AM[a >> 2u], (a & 3u) * 8u, 8u);
  let s = NC[p(19u) + q] * NA[p(14u) + ${pow2 ? "(b >> p(16u))" : "b / p(16u)"}];
  return s + pf(17u);
}`;
}

/**
 * Forward, 8 k per step: one packed word and one scale per column j give its codes for k..k+7
 * (q = pb + cj I + k a multiple of 8, one block since bs % 8 == 0), flipped into rows as in loadW.
 */
const Q8_LOOP = `for (; k + 8u <= kEnd; k += 8u) {
    ${[0, 1, 2, 3].map((i) => `let a${i} = X4(xo + r${i} * K + k); let h${i} = X4(xo + r${i} * K + k + 4u);`).join("\n    ")}
    ${[0, 1, 2, 3].map((j) => `let e${j} = c${j} * I + k; let w${j} = PK[(p(12u) + e${j}) >> 3u]; let s${j} = sc(e${j} >> p(15u));`).join("\n    ")}
    let lo = transpose(mat4x4<f32>(${[0, 1, 2, 3]
      .map((j) => `vec4<f32>(cb[(w${j} >> 4u) & 15u], cb[w${j} & 15u], cb[(w${j} >> 12u) & 15u], cb[(w${j} >> 8u) & 15u]) * s${j}`)
      .join(", ")}));
    let hi = transpose(mat4x4<f32>(${[0, 1, 2, 3]
      .map((j) => `vec4<f32>(cb[(w${j} >> 20u) & 15u], cb[(w${j} >> 16u) & 15u], cb[w${j} >> 28u], cb[(w${j} >> 24u) & 15u]) * s${j}`)
      .join(", ")}));
    ${[0, 1, 2, 3]
      .map(
        (i) =>
          `acc${i} += a${i}.x * lo[0] + a${i}.y * lo[1] + a${i}.z * lo[2] + a${i}.w * lo[3] + h${i}.x * hi[0] + h${i}.y * hi[1] + h${i}.z * hi[2] + h${i}.w * hi[3];`,
      )
      .join("\n    ")}
  }`;

/** The 4 A (x) rows a0..a3 over k..k+3. */
function loadX(s: Shader): string {
  return [0, 1, 2, 3]
    .map((i) =>
      s.xvec
        ? `let a${i} = X4(xo + r${i} * K + k);`
        : `let a${i} = vec4<f32>(X1(xo + r${i} * K + k), X1(xo + r${i} * K + k + 1u), X1(xo + r${i} * K + k + 2u), X1(xo + r${i} * K + k + 3u));`,
    )
    .join("\n    ");
}

/**
 * The four rows b0..b3 of op(W) over columns c0..c3 for k..k+3. Forward: op(W)[k, n] = W[n, k],
 * so column j of the 4x4 block is the half word of row cj of W (transposed in registers);
 * gradient: row k+t is the half word of W row k+t at columns col0..col0+3.
 */
function loadW(s: Shader): string {
  if (s.decode === "q4" && !s.transpose) {
    return `let wt = transpose(mat4x4<f32>(${[0, 1, 2, 3].map((j) => `dq4(c${j} * I + k)`).join(", ")}));
    let b0 = wt[0]; let b1 = wt[1]; let b2 = wt[2]; let b3 = wt[3];`;
  }
  if (s.decode === "q4") return [0, 1, 2, 3].map((t) => `let b${t} = dq4((k + ${t}u) * I + col0);`).join("\n    ");
  const e = (k: string, n: string) => (s.transpose ? `${k} * I + ${n}` : `${n} * I + ${k}`);
  return [0, 1, 2, 3].map((t) => `let b${t} = vec4<f32>(${[0, 1, 2, 3].map((j) => `dq1(${e(`(k + ${t}u)`, `c${j}`)})`).join(", ")});`).join("\n    ");
}

export function matmul4bitWgsl(s: Shader): string {
  const w = new Wgsl().params(64);
  const out = s.vecOut ? "vec4<f32>" : "f32";
  // The element of W at op(W)[k, n]: forward W[n, k] (e = n I + k), gradient W[k, n] (e = k I + n).
  const e = (k: string, n: string) => (s.transpose ? `${k} * I + ${n}` : `${n} * I + ${k}`);
  const blk = s.pow2 ? "e >> p(15u)" : "e / p(15u)";
  const decls = `@group(0) @binding(1) var<storage, read_write> Y: array<${out}>;
${xOperand(s)}
@group(0) @binding(3) var<storage, read> PK: array<u32>;
@group(0) @binding(4) var<storage, read> AM: array<u32>;
@group(0) @binding(5) var<storage, read> CB: array<f32>;
${scaleFn(s.nested, s.pow2)}
// The 16-entry code table, copied once per invocation (private: no bounds check per lookup).
var<private> cb: array<f32, 16>;
// One code: nibble q = pb + e; byte (q >> 1) & 3 of word q >> 3, the even element in its high nibble.
fn code1(e: u32) -> f32 {
  let q = p(12u) + e;
  let t = q & 7u;
  return cb[(PK[q >> 3u] >> ((t >> 1u) * 8u + select(4u, 0u, (t & 1u) == 1u))) & 15u];
}
fn dq1(e: u32) -> f32 { return code1(e) * sc(${blk}); }
// Elements e..e+3 (pb + e a multiple of 4, one block): one half word, one scale, f32(code * scale) each.
fn dq4(e: u32) -> vec4<f32> {
  let q = p(12u) + e;
  let h = PK[q >> 3u] >> ((q & 4u) * 4u);
  return vec4<f32>(cb[(h >> 4u) & 15u], cb[h & 15u], cb[(h >> 12u) & 15u], cb[(h >> 8u) & 15u]) * sc(${blk});
}`;
  // Later K chunks add to what the earlier ones stored (p(22) != 0).
  const store = s.vecOut
    ? [0, 1, 2, 3]
        .map((i) => `if (row0 + ${i}u < mEnd) { let o = (yo + (row0 + ${i}u) * N + col0) >> 2u; Y[o] = acc${i} + select(vec4<f32>(0.0), Y[o], carry); }`)
        .join("\n  ")
    : [0, 1, 2, 3]
        .map(
          (i) =>
            `if (row0 + ${i}u < mEnd) { for (var j = 0u; j < 4u; j++) { if (col0 + j < nEnd) { let o = yo + (row0 + ${i}u) * N + col0 + j; Y[o] = acc${i}[j] + select(0.0, Y[o], carry); } } }`,
        )
        .join("\n  ");
  // The k tail (K % 4 != 0; forward q4 never has one since K = I).
  const tail = `for (; k < kEnd; k++) {
    let bk = vec4<f32>(${[0, 1, 2, 3].map((j) => `dq1(${e("k", `c${j}`)})`).join(", ")});
    acc0 += X1(xo + r0 * K + k) * bk;
    acc1 += X1(xo + r1 * K + k) * bk;
    acc2 += X1(xo + r2 * K + k) * bk;
    acc3 += X1(xo + r3 * K + k) * bk;
  }`;
  return `${w.build("")}
${decls}
@compute @workgroup_size(${s.wx}, ${s.wy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wid.y * nwg.x + wid.x;
  if (g >= p(6u)) { return; }
  let tn = g % p(4u);
  let tm = g / p(4u);
  let mEnd = p(0u);
  let nEnd = p(1u);
  let K = p(2u);
  let I = p(3u);
  let N = p(9u);
  let xo = p(10u);
  let yo = p(11u);
  let row0 = p(7u) + (tm * ${s.wy}u + lid.y) * 4u;
  let col0 = p(8u) + (tn * ${s.wx}u + lid.x) * 4u;
  if (row0 >= mEnd || col0 >= nEnd) { return; }
  for (var i = 0u; i < 16u; i++) { cb[i] = CB[p(18u) + i]; }
  // Rows/cols past the end decode and load whatever the (bounds-checked) bindings hold and are never stored.
  ${REG4X4_SETUP}
  let k0 = p(21u);
  let kEnd = p(20u);
  let carry = p(22u) != 0u;
  var k = k0;
  ${s.q8 ? Q8_LOOP : ""}
  for (; k + 4u <= kEnd; k += 4u) {
    ${loadX(s)}
    ${loadW(s)}
    ${REG4X4_FMA}
  }
  ${tail}
  ${store}
}`;
}

const f32Bits = (v: number) => new Uint32Array(Float32Array.of(v).buffer)[0];

/** FusedKernels.matmul4bit on the device: x [rows, K] contiguous f32/f16 -> [rows, N] in x's dtype. */
export function matmul4bit(ctx: KernelContext, x: GpuInput, wq: Quant4bitInputs<GpuStorage>, transpose: boolean): GpuStorage {
  if (x.dtype !== "f32" && x.dtype !== "f16") throw new TypeError(`matmul4bit: x must be f32 or f16 on WebGPU, got ${x.dtype}`);
  const { outFeatures: O, inFeatures: I, blocksize: bs, nested } = wq;
  const [K, N] = transpose ? [O, I] : [I, O];
  const shape = x.view.shape;
  if (shape[shape.length - 1] !== K) throw new RangeError(`matmul4bit: x [${shape}] must end in ${K} (W [${O}, ${I}]${transpose ? ", transposed" : ""})`);
  const M = K === 0 ? 0 : shape.reduce((a, b) => a * b, 1) / K;
  if (M * N === 0) return fullKernel(ctx, M * N, 0, x.dtype);

  const xo = x.view.offset;
  const po = wq.packed.view.offset * 2; // in nibbles
  const q4 = I % 4 === 0 && po % 4 === 0 && bs % 4 === 0;
  const wx = Math.min(16, pow2ceil(Math.ceil(N / 4)));
  const wy = Math.min(256 / wx, pow2ceil(Math.ceil(M / 32)));
  const pow2 = isPow2(bs) && (!nested || isPow2(nested.blocksize));
  const shader: Shader = {
    transpose,
    decode: q4 ? "q4" : "any",
    xdtype: x.dtype,
    xvec: K % 4 === 0 && xo % 4 === 0,
    nested: !!nested,
    q8: !transpose && q4 && I % 8 === 0 && po % 8 === 0 && bs % 8 === 0 && K % 4 === 0 && xo % 4 === 0 && pow2,
    pow2,
    vecOut: N % 4 === 0,
    wx,
    wy,
  };
  const name = `matmul4bit_${transpose ? "t" : "n"}_${shader.q8 ? "q8" : shader.decode}${shader.nested ? "_dq" : ""}${shader.pow2 ? "" : "_div"}_${x.dtype}${
    shader.xvec ? "_v" : ""
  }${shader.vecOut ? "_vo" : ""}`;
  const k = ctx.engine.compile({
    name: `${name}_${wx}x${wy}`,
    code: matmul4bitWgsl(shader),
    bindings: ["write", "read", "read", "read", "read", ...(nested ? (["read", "read"] as const) : [])],
  });

  const ao = wq.absmax.view.offset;
  const handles = [wq.packed, wq.absmax, wq.code, ...(nested ? [nested.absmax, nested.code] : [])].map((i) => i.handle);
  const y = ctx.alloc("f32", M * N);
  // K in one piece when it fits; otherwise halving chunks, each adding into y (a gradient through
  // a weight larger than one binding has no other split). Chunks start on multiples of g, which
  // keeps vec4 x loads and the forward's half words (q4) or words (q8) aligned.
  const g = shader.q8 ? 8 : shader.xvec || (!transpose && q4) ? 4 : 1;
  for (let kc = K; ; kc = Math.max(g, Math.ceil(kc / 2 / g) * g)) {
    let plans: { k0: number; k1: number; boxes: Box[] }[];
    try {
      plans = [];
      for (let k0 = 0; k0 < K; k0 += kc) plans.push({ k0, k1: Math.min(K, k0 + kc), boxes: planChunk(k0, Math.min(K, k0 + kc)) });
    } catch (err) {
      if (!(err instanceof WebGpuLimitError) || kc <= g) throw err;
      continue;
    }
    plans.forEach((pl, ci) => pl.boxes.forEach((box) => dispatch(pl.k0, pl.k1, ci > 0, box)));
    return finish(ctx, y, x.dtype);
  }

  /** Boxes over the output space [M, N] for k in [k0, k1): y and x as in a matmul, W's buffers through e (see the header). */
  function planChunk(k0: number, k1: number): Box[] {
    // e(k, n) = k sk + n sn.
    const [sk, sn] = transpose ? [I, 1] : [1, I];
    const [eo, spanW] = [k0 * sk, (k1 - k0 - 1) * sk];
    const accesses: Access[] = [
      { strides: [N, 1], offset: 0, epw: 1 },
      { strides: [K, 0], offset: xo + k0, epw: EPW[x.dtype], span: k1 - k0 - 1 },
      { strides: [0, sn], offset: po + eo, epw: 8, span: spanW },
      { strides: [0, sn], offset: ao * bs + eo, epw: nested ? 4 * bs : bs, span: spanW },
      { strides: [0, 0], offset: wq.code.view.offset, epw: 1, span: 15 },
    ];
    if (nested) {
      const nbs = nested.blocksize;
      accesses.push(
        { strides: [0, sn], offset: nested.absmax.view.offset * bs * nbs + eo, epw: bs * nbs, span: spanW },
        { strides: [0, 0], offset: nested.code.view.offset, epw: 1, span: 255 },
      );
    }
    // Columns split on multiples of 4 (q4 and vec4 stores need aligned col0); rows anywhere.
    return planBoxes("matmul4bit", [M, N], accesses, ctx.maxWords, [1, 4]);
  }

  function dispatch(k0: number, k1: number, carry: boolean, box: Box): void {
    const win = box.windows;
    const [rows, cols] = [box.hi[0] - box.lo[0], box.hi[1] - box.lo[1]];
    const tilesM = Math.ceil(rows / (wy * 4));
    const tilesN = Math.ceil(cols / (wx * 4));
    const p = new Uint32Array(64);
    p[0] = box.hi[0];
    p[1] = box.hi[1];
    p[2] = K;
    p[3] = I;
    p[4] = tilesN;
    p[5] = tilesM;
    p[6] = tilesN * tilesM;
    p[7] = box.lo[0];
    p[8] = box.lo[1];
    p[9] = N;
    // Bases relative to each binding's first word (indices use absolute k and e); u32 wrap-around keeps "negative" bases exact.
    p[10] = xo - win[1].word * EPW[x.dtype];
    p[11] = -win[0].word;
    p[12] = po - win[2].word * 8;
    p[13] = nested ? ao - win[3].word * 4 : ao - win[3].word;
    // Shift counts when every block size is a power of two, else divisors.
    p[15] = shader.pow2 ? Math.log2(bs) : bs;
    p[18] = wq.code.view.offset - win[4].word;
    if (nested) {
      p[14] = nested.absmax.view.offset - win[5].word;
      p[16] = shader.pow2 ? Math.log2(nested.blocksize) : nested.blocksize;
      p[17] = f32Bits(nested.offset);
      p[19] = nested.code.view.offset - win[6].word;
    }
    p[20] = k1;
    p[21] = k0;
    p[22] = carry ? 1 : 0;
    // vec4 bindings of x and y: whole 16-byte elements.
    const binds = [bindWords(y, win[0].word, Math.ceil(win[0].words / 4) * 4), bindWords(x.handle, win[1].word, Math.ceil(win[1].words / 4) * 4)];
    handles.forEach((h, j) => binds.push(bindWords(h, win[2 + j].word, win[2 + j].words)));
    ctx.engine.dispatch(k, p, binds, tilesN * tilesM);
  }
}
