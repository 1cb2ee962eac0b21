/**
 * Flash-style attention WGSL: one invocation per query row (forward, dq pass) or per key row
 * (dk/dv pass), the head dim D baked in so rows live in private arrays. Keys stream from
 * storage (neighbouring lanes read the same key, which caches well on lavapipe, where workgroup
 * memory and barriers cost more than they save); no [T, S] matrix exists anywhere.
 *
 *   forward  per query row i: online softmax over its visible keys in blocks of BK (one rescale
 *            of the accumulator per block); out_i = sum_s p_is v_s, lse_i = m + log(l).
 *   dq pass  per query row i: delta_i = dO_i . O_i; p_is = exp(scale q_i.k_s - lse_i);
 *            dq_i = scale sum_s p_is (dO_i.v_s - delta_i) k_s. Writes delta for the next pass.
 *   dkv pass per key row s of kv head hk: the sums over every query row of the hk group that
 *            sees s: dv_s = sum_i p_is dO_i, dk_s = scale sum_i p_is (dO_i.v_s - delta_i) q_i.
 *
 * Causal: query t sees keys 0..S-T+t (the queries are the last T of S positions).
 * Parameters (u32): 0 first row of the run, 1 rows, 2 T, 3 S, 4 Hq, 5 G = Hq / Hkv, 6 Hkv,
 * 7 causal, 8 scale (f32), 9 D, 10 D4; 16.. element bases of the bindings in order (kernels/runs.ts).
 * D also sizes the private arrays at compile time, but the loops over it read D and D4 from the
 * parameters: with constant trip counts lavapipe's LLVM unrolls them fully and a D = 128 backward
 * took minutes to compile.
 */
import type { DType } from "@lowrank/tensor";
import { EPW, Wgsl } from "./common.ts";

/** Largest head dim: three or four D-float rows per invocation stay within WGSL's 8 KiB of function memory. */
export const MAX_HEAD_DIM = 256;
const BK = 16;
export const WG = 64;

export interface AttentionDtypes {
  q: DType;
  k: DType;
  v: DType;
}

const ROW = `
  let D = p(9u);
  let D4 = p(10u);
  let T = p(2u);
  let S = p(3u);
  let scale = pf(8u);`;

/** Query row r -> t, its kv head's first key row kv0 and the number of keys it sees. */
const QUERY = `${ROW}
  let r = p(0u) + unit;
  let t = r % T;
  let bh = r / T;
  let kv0 = ((bh / p(4u)) * p(6u) + (bh % p(4u)) / p(5u)) * S;
  var send = S;
  if (p(7u) != 0u) { send = u32(clamp(i32(S) - i32(T) + i32(t) + 1, 0, i32(S))); }`;

/**
 * Store a row of D values at element `at` of `buf` in `dtype`: `val` is the vec4 of chunk i.
 * Halves go two per word (D is even, `at` too).
 */
function storeRow(w: Wgsl, buf: string, dtype: DType, at: string, val: string): string {
  if (EPW[dtype] === 1) {
    return `for (var i = 0u; i < D4; i++) {
    let c = ${val};
    for (var j = 0u; j < 4u; j++) { if (4u * i + j < D) { ${buf}[${at} + 4u * i + j] = ${w.encode(dtype, "c[j]")}; } }
  }`;
  }
  return `for (var i = 0u; i < D4; i++) {
    let c = ${val};
    let e = (${at} + 4u * i) >> 1u;
    ${buf}[e] = ${w.encode(dtype, "c.x")} | (${w.encode(dtype, "c.y")} << 16u);
    if (4u * i + 2u < D) { ${buf}[e + 1u] = ${w.encode(dtype, "c.z")} | (${w.encode(dtype, "c.w")} << 16u); }
  }`;
}

/**
 * Rows are held as D4 = ceil(D / 4) vec4s; `ld4_<x>(o, i)` reads chunk i of the row at element o
 * (zeros past D when D is not a multiple of 4).
 */
function header(D: number, bindings: [string, DType | null][]): Wgsl {
  const w = new Wgsl().params(64).need("inf");
  bindings.forEach(([name, dtype], i) => {
    w.buffer(i + 1, name, dtype === null);
    if (!dtype) return;
    w.loader(name, dtype);
    const lane = (j: number) => (D > 0 && (D % 4 === 0 || j === 0) ? `ld_${name}(b + ${j}u)` : `select(0.0, ld_${name}(b + ${j}u), 4u * i + ${j}u < p(9u))`);
    w.decl(`fn ld4_${name}(o: u32, i: u32) -> vec4<f32> { let b = o + 4u * i; return vec4<f32>(${[0, 1, 2, 3].map(lane).join(", ")}); }`);
  });
  return w.decl(`const DV = ${Math.max(1, Math.ceil(D / 4))}u;\nconst BK = ${BK}u;`);
}

const hsum = (v: string) => `dot(${v}, vec4<f32>(1.0))`;

/** Bindings: 1 out, 2 lse (f32), 3 q, 4 k, 5 v. */
export function attentionForwardWgsl(D: number, dt: AttentionDtypes, out: DType): string {
  const w = header(D, [
    ["out", null],
    ["lse", null],
    ["q", dt.q],
    ["k", dt.k],
    ["v", dt.v],
  ]);
  return w.build(
    Wgsl.main(
      WG,
      `  if (unit >= p(1u)) { return; }${QUERY}
  var qv: array<vec4<f32>, DV>;
  let qo = p(18u) + r * D;
  for (var i = 0u; i < D4; i++) { qv[i] = ld4_q(qo, i) * scale; }
  var acc: array<vec4<f32>, DV>;
  var sc: array<f32, BK>;
  var m = -inf_f32();
  var l = 0.0;
  for (var s0 = 0u; s0 < send; s0 += BK) {
    let n = min(BK, send - s0);
    var mb = m;
    for (var j = 0u; j < n; j++) {
      let ko = p(19u) + (kv0 + s0 + j) * D;
      var d4 = vec4<f32>();
      for (var i = 0u; i < D4; i++) { d4 += qv[i] * ld4_k(ko, i); }
      sc[j] = ${hsum("d4")};
      mb = max(mb, sc[j]);
    }
    let corr = select(exp(m - mb), 1.0, m == mb);
    l *= corr;
    for (var i = 0u; i < D4; i++) { acc[i] *= corr; }
    for (var j = 0u; j < n; j++) {
      let e = exp(sc[j] - mb);
      l += e;
      let vo = p(20u) + (kv0 + s0 + j) * D;
      for (var i = 0u; i < D4; i++) { acc[i] += e * ld4_v(vo, i); }
    }
    m = mb;
  }
  // A row that sees no key (only when S < T) gives out 0 and lse -inf.
  lse[p(17u) + r] = bitcast<u32>(select(m + log(l), -inf_f32(), l == 0.0));
  let inv = select(1.0 / l, 0.0, l == 0.0);
  ${storeRow(w, "out", out, "p(16u) + r * D", "acc[i] * inv")}`,
    ),
  );
}

/** Bindings: 1 gq, 2 delta (f32), 3 q, 4 k, 5 v, 6 out, 7 lse, 8 gy. */
export function attentionDqWgsl(D: number, dt: AttentionDtypes & { out: DType; lse: DType; gy: DType }, gq: DType): string {
  const w = header(D, [
    ["gq", null],
    ["delta", null],
    ["q", dt.q],
    ["k", dt.k],
    ["v", dt.v],
    ["out", dt.out],
    ["lse", dt.lse],
    ["gy", dt.gy],
  ]);
  return w.build(
    Wgsl.main(
      WG,
      `  if (unit >= p(1u)) { return; }${QUERY}
  var qv: array<vec4<f32>, DV>;
  var gv: array<vec4<f32>, DV>;
  var dq: array<vec4<f32>, DV>;
  let qo = p(18u) + r * D;
  let oo = p(21u) + r * D;
  let go = p(23u) + r * D;
  var dl4 = vec4<f32>();
  for (var i = 0u; i < D4; i++) {
    qv[i] = ld4_q(qo, i) * scale;
    gv[i] = ld4_gy(go, i);
    dl4 += gv[i] * ld4_out(oo, i);
  }
  let dl = ${hsum("dl4")};
  let ls = ld_lse(p(22u) + r);
  for (var s = 0u; s < send; s++) {
    let ko = p(19u) + (kv0 + s) * D;
    let vo = p(20u) + (kv0 + s) * D;
    var sc = vec4<f32>();
    var dp = vec4<f32>();
    for (var i = 0u; i < D4; i++) {
      sc += qv[i] * ld4_k(ko, i);
      dp += gv[i] * ld4_v(vo, i);
    }
    let ds = exp(${hsum("sc")} - ls) * (${hsum("dp")} - dl);
    for (var i = 0u; i < D4; i++) { dq[i] += ds * ld4_k(ko, i); }
  }
  delta[p(17u) + r] = bitcast<u32>(dl);
  ${storeRow(w, "gq", gq, "p(16u) + r * D", "dq[i] * scale")}`,
    ),
  );
}

/** Bindings: 1 gk, 2 gv, 3 q, 4 k, 5 v, 6 gy, 7 lse, 8 delta. Rows are key rows over [B, Hkv, S]. */
export function attentionDkvWgsl(D: number, dt: AttentionDtypes & { gy: DType; lse: DType }, gk: DType, gvd: DType): string {
  const w = header(D, [
    ["gk", null],
    ["gv", null],
    ["q", dt.q],
    ["k", dt.k],
    ["v", dt.v],
    ["gy", dt.gy],
    ["lse", dt.lse],
    ["delta", "f32"],
  ]);
  return w.build(
    Wgsl.main(
      WG,
      `  if (unit >= p(1u)) { return; }${ROW}
  let kr = p(0u) + unit;
  let s = kr % S;
  let bk = kr / S;
  let G = p(5u);
  let q0 = ((bk / p(6u)) * p(4u) + (bk % p(6u)) * G) * T;
  var kv: array<vec4<f32>, DV>;
  var vv: array<vec4<f32>, DV>;
  var dk: array<vec4<f32>, DV>;
  var dv: array<vec4<f32>, DV>;
  for (var i = 0u; i < D4; i++) {
    kv[i] = ld4_k(p(19u) + kr * D, i) * scale;
    vv[i] = ld4_v(p(20u) + kr * D, i);
  }
  var t0 = 0u;
  if (p(7u) != 0u && s + T > S) { t0 = s + T - S; }
  for (var g = 0u; g < G; g++) {
    for (var t = t0; t < T; t++) {
      let r = q0 + g * T + t;
      let qo = p(18u) + r * D;
      let go = p(21u) + r * D;
      var sc = vec4<f32>();
      var dp = vec4<f32>();
      for (var i = 0u; i < D4; i++) {
        sc += ld4_q(qo, i) * kv[i];
        dp += ld4_gy(go, i) * vv[i];
      }
      let pr = exp(${hsum("sc")} - ld_lse(p(22u) + r));
      let ds = pr * (${hsum("dp")} - ld_delta(p(23u) + r));
      for (var i = 0u; i < D4; i++) {
        dv[i] += pr * ld4_gy(go, i);
        dk[i] += ds * ld4_q(qo, i);
      }
    }
  }
  ${storeRow(w, "gk", gk, "p(16u) + kr * D", "dk[i] * scale")}
  ${storeRow(w, "gv", gvd, "p(17u) + kr * D", "dv[i]")}`,
    ),
  );
}
