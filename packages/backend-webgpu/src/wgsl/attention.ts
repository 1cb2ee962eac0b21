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
 * 7 causal, 8 scale (f32); 16.. element bases of the bindings in order (kernels/runs.ts).
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

/** Store `D` values `val(d)` as a row at element `at` of `buf` in `dtype` (halves: D is even, two per word). */
function storeRow(w: Wgsl, buf: string, dtype: DType, at: string, val: (d: string) => string): string {
  if (EPW[dtype] === 1) return `for (var d = 0u; d < D; d++) { ${buf}[${at} + d] = ${w.encode(dtype, val("d"))}; }`;
  return `for (var d = 0u; d < D; d += 2u) { ${buf}[(${at} + d) >> 1u] = ${w.encode(dtype, val("d"))} | (${w.encode(dtype, val("d + 1u"))} << 16u); }`;
}

function header(D: number, bindings: [string, DType | null][]): Wgsl {
  const w = new Wgsl().params(64).need("inf");
  bindings.forEach(([name, dtype], i) => {
    w.buffer(i + 1, name, dtype === null);
    if (dtype) w.loader(name, dtype);
  });
  return w.decl(`const D = ${D}u;\nconst BK = ${BK}u;`);
}

/** Bindings: 1 out, 2 lse (f32), 3 q, 4 k, 5 v. */
export function attentionForwardWgsl(D: number, dt: AttentionDtypes, out: DType): string {
  const w = header(D, [["out", null], ["lse", null], ["q", dt.q], ["k", dt.k], ["v", dt.v]]);
  return w.build(Wgsl.main(WG, `  if (unit >= p(1u)) { return; }${QUERY}
  var qv: array<f32, D>;
  let qo = p(18u) + r * D;
  for (var d = 0u; d < D; d++) { qv[d] = ld_q(qo + d) * scale; }
  var acc: array<f32, D>;
  var sc: array<f32, BK>;
  var m = -inf_f32();
  var l = 0.0;
  for (var s0 = 0u; s0 < send; s0 += BK) {
    let n = min(BK, send - s0);
    var mb = m;
    for (var j = 0u; j < n; j++) {
      let ko = p(19u) + (kv0 + s0 + j) * D;
      var dot = 0.0;
      for (var d = 0u; d < D; d++) { dot += qv[d] * ld_k(ko + d); }
      sc[j] = dot;
      mb = max(mb, dot);
    }
    let corr = select(exp(m - mb), 1.0, m == mb);
    l *= corr;
    for (var d = 0u; d < D; d++) { acc[d] *= corr; }
    for (var j = 0u; j < n; j++) {
      let e = exp(sc[j] - mb);
      l += e;
      let vo = p(20u) + (kv0 + s0 + j) * D;
      for (var d = 0u; d < D; d++) { acc[d] += e * ld_v(vo + d); }
    }
    m = mb;
  }
  // A row that sees no key (only when S < T) gives out 0 and lse -inf.
  lse[p(17u) + r] = bitcast<u32>(select(m + log(l), -inf_f32(), l == 0.0));
  let inv = select(1.0 / l, 0.0, l == 0.0);
  ${storeRow(w, "out", out, "p(16u) + r * D", (d) => `acc[${d}] * inv`)}`));
}

/** Bindings: 1 gq, 2 delta (f32), 3 q, 4 k, 5 v, 6 out, 7 lse, 8 gy. */
export function attentionDqWgsl(D: number, dt: AttentionDtypes & { out: DType; lse: DType; gy: DType }, gq: DType): string {
  const w = header(D, [["gq", null], ["delta", null], ["q", dt.q], ["k", dt.k], ["v", dt.v], ["out", dt.out], ["lse", dt.lse], ["gy", dt.gy]]);
  return w.build(Wgsl.main(WG, `  if (unit >= p(1u)) { return; }${QUERY}
  var qv: array<f32, D>;
  var gv: array<f32, D>;
  var dq: array<f32, D>;
  let qo = p(18u) + r * D;
  let oo = p(21u) + r * D;
  let go = p(23u) + r * D;
  var dl = 0.0;
  for (var d = 0u; d < D; d++) {
    qv[d] = ld_q(qo + d) * scale;
    gv[d] = ld_gy(go + d);
    dl += gv[d] * ld_out(oo + d);
  }
  let ls = ld_lse(p(22u) + r);
  for (var s = 0u; s < send; s++) {
    let ko = p(19u) + (kv0 + s) * D;
    let vo = p(20u) + (kv0 + s) * D;
    var sc = 0.0;
    var dp = 0.0;
    for (var d = 0u; d < D; d++) {
      sc += qv[d] * ld_k(ko + d);
      dp += gv[d] * ld_v(vo + d);
    }
    let ds = exp(sc - ls) * (dp - dl);
    for (var d = 0u; d < D; d++) { dq[d] += ds * ld_k(ko + d); }
  }
  delta[p(17u) + r] = bitcast<u32>(dl);
  ${storeRow(w, "gq", gq, "p(16u) + r * D", (d) => `dq[${d}] * scale`)}`));
}

/** Bindings: 1 gk, 2 gv, 3 q, 4 k, 5 v, 6 gy, 7 lse, 8 delta. Rows are key rows over [B, Hkv, S]. */
export function attentionDkvWgsl(D: number, dt: AttentionDtypes & { gy: DType; lse: DType }, gk: DType, gvd: DType): string {
  const w = header(D, [["gk", null], ["gv", null], ["q", dt.q], ["k", dt.k], ["v", dt.v], ["gy", dt.gy], ["lse", dt.lse], ["delta", "f32"]]);
  return w.build(Wgsl.main(WG, `  if (unit >= p(1u)) { return; }${ROW}
  let kr = p(0u) + unit;
  let s = kr % S;
  let bk = kr / S;
  let G = p(5u);
  let q0 = ((bk / p(6u)) * p(4u) + (bk % p(6u)) * G) * T;
  var kv: array<f32, D>;
  var vv: array<f32, D>;
  var dk: array<f32, D>;
  var dv: array<f32, D>;
  for (var d = 0u; d < D; d++) {
    kv[d] = ld_k(p(19u) + kr * D + d) * scale;
    vv[d] = ld_v(p(20u) + kr * D + d);
  }
  var t0 = 0u;
  if (p(7u) != 0u && s + T > S) { t0 = s + T - S; }
  for (var g = 0u; g < G; g++) {
    for (var t = t0; t < T; t++) {
      let r = q0 + g * T + t;
      let qo = p(18u) + r * D;
      let go = p(21u) + r * D;
      var sc = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < D; d++) {
        sc += ld_q(qo + d) * kv[d];
        dp += ld_gy(go + d) * vv[d];
      }
      let pr = exp(sc - ld_lse(p(22u) + r));
      let ds = pr * (dp - ld_delta(p(23u) + r));
      for (var d = 0u; d < D; d++) {
        dv[d] += pr * ld_gy(go + d);
        dk[d] += ds * ld_q(qo + d);
      }
    }
  }
  ${storeRow(w, "gk", gk, "p(16u) + kr * D", (d) => `dk[${d}] * scale`)}
  ${storeRow(w, "gv", gvd, "p(17u) + kr * D", (d) => `dv[${d}]`)}`));
}
