/**
 * Causal grouped-query attention on the CPU, forward and backward (FusedKernels.attention).
 *
 * The query heads that share a kv head are adjacent in q [B, Hq, T, D], so each (batch, kv head)
 * is one [rep·T, D] block of rows: scores = Q·Kᵀ and P·V go through the matmul engine (BLAS or
 * WASM SIMD) a block of rows at a time. Only the row logsumexp survives the forward; backward
 * recomputes P = exp(scale·Q·Kᵀ - lse) block by block, as flash attention does. The transient
 * score block is bounded (ROW_BLOCK_FLOATS), so memory does not grow with T·S.
 */
import type { MatmulEngine } from "../matmul.ts";

/** Scores held at once: rows per block = this / S (at least 16 rows). 4 MiB of f32. */
const ROW_BLOCK_FLOATS = 1 << 20;

export interface AttnShape {
  B: number;
  Hq: number;
  Hkv: number;
  T: number;
  S: number;
  D: number;
  causal: boolean;
  scale: number;
}

/** dst [cols, rows] = srcᵀ for src [rows, cols] row-major. */
function transpose(src: Float32Array, rows: number, cols: number, dst: Float32Array): void {
  for (let r0 = 0; r0 < rows; r0 += 32) {
    const r1 = Math.min(rows, r0 + 32);
    for (let c0 = 0; c0 < cols; c0 += 32) {
      const c1 = Math.min(cols, c0 + 32);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) dst[c * rows + r] = src[r * cols + c];
    }
  }
}

/** Keys visible to row r of a group block (rows are rep heads of T queries each). */
const visible = (a: AttnShape, r: number) => (a.causal ? a.S - a.T + (r % a.T) + 1 : a.S);

function rowBlock(a: AttnShape): number {
  const R = (a.Hq / a.Hkv) * a.T;
  return Math.min(R, Math.max(16, Math.floor(ROW_BLOCK_FLOATS / a.S)));
}

/** P = softmax(scale · scores) over each row's visible keys, in place; zeros beyond; lse per row. */
function softmaxRows(s: Float32Array, rows: number, r0: number, a: AttnShape, lse: Float32Array, lseAt: number): void {
  const S = a.S;
  for (let i = 0; i < rows; i++) {
    const n = visible(a, r0 + i);
    const o = i * S;
    let mx = -Infinity;
    for (let j = 0; j < n; j++) {
      const x = s[o + j] * a.scale;
      s[o + j] = x;
      if (x > mx) mx = x;
    }
    let sum = 0;
    for (let j = 0; j < n; j++) {
      const e = Math.exp(s[o + j] - mx);
      s[o + j] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let j = 0; j < n; j++) s[o + j] *= inv;
    s.fill(0, o + n, o + S);
    lse[lseAt + i] = mx + Math.log(sum);
  }
}

export function attentionForward(mm: MatmulEngine, q: Float32Array, k: Float32Array, v: Float32Array, a: AttnShape): { out: Float32Array; lse: Float32Array } {
  const { B, Hq, Hkv, T, S, D } = a;
  const R = (Hq / Hkv) * T;
  const rb = rowBlock(a);
  const out = new Float32Array(B * Hq * T * D);
  const lse = new Float32Array(B * Hq * T);
  const kT = new Float32Array(D * S);
  const scores = new Float32Array(rb * S);
  for (let b = 0; b < B; b++) {
    for (let g = 0; g < Hkv; g++) {
      const kv = (b * Hkv + g) * S * D;
      const q0 = (b * Hkv + g) * R; // first row of this group in [B·Hq·T]
      transpose(k.subarray(kv, kv + S * D), S, D, kT);
      const V = v.subarray(kv, kv + S * D);
      for (let r0 = 0; r0 < R; r0 += rb) {
        const rows = Math.min(rb, R - r0);
        const Q = q.subarray((q0 + r0) * D, (q0 + r0 + rows) * D);
        const sc = scores.subarray(0, rows * S);
        mm.matmul(Q, kT, sc, rows, S, D);
        softmaxRows(sc, rows, r0, a, lse, q0 + r0);
        mm.matmul(sc, V, out.subarray((q0 + r0) * D, (q0 + r0 + rows) * D), rows, D, S);
      }
    }
  }
  return { out, lse };
}

export function attentionBackward(
  mm: MatmulEngine, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, lse: Float32Array, gy: Float32Array, a: AttnShape,
): { gq: Float32Array; gk: Float32Array; gv: Float32Array } {
  const { B, Hq, Hkv, T, S, D, scale } = a;
  const R = (Hq / Hkv) * T;
  const rb = rowBlock(a);
  const gq = new Float32Array(q.length);
  const gk = new Float32Array(k.length);
  const gv = new Float32Array(v.length);
  // delta[row] = Σ_d gy·out: the softmax backward's row term, from the output instead of P.
  const delta = new Float32Array(B * Hq * T);
  for (let r = 0; r < delta.length; r++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += gy[r * D + d] * out[r * D + d];
    delta[r] = s;
  }
  const kT = new Float32Array(D * S);
  const vT = new Float32Array(D * S);
  const P = new Float32Array(rb * S);
  const dP = new Float32Array(rb * S);
  const tBlock = new Float32Array(rb * S);
  const acc = new Float32Array(S * D);
  for (let b = 0; b < B; b++) {
    for (let g = 0; g < Hkv; g++) {
      const kv = (b * Hkv + g) * S * D;
      const q0 = (b * Hkv + g) * R;
      const K = k.subarray(kv, kv + S * D);
      transpose(K, S, D, kT);
      transpose(v.subarray(kv, kv + S * D), S, D, vT);
      const gK = gk.subarray(kv, kv + S * D);
      const gV = gv.subarray(kv, kv + S * D);
      for (let r0 = 0; r0 < R; r0 += rb) {
        const rows = Math.min(rb, R - r0);
        const span = (t: Float32Array) => t.subarray((q0 + r0) * D, (q0 + r0 + rows) * D);
        const Q = span(q), dO = span(gy);
        const p = P.subarray(0, rows * S), dp = dP.subarray(0, rows * S), tb = tBlock.subarray(0, rows * S);
        mm.matmul(Q, kT, p, rows, S, D);
        for (let i = 0; i < rows; i++) {
          const n = visible(a, r0 + i), o = i * S, l = lse[q0 + r0 + i];
          for (let j = 0; j < n; j++) p[o + j] = Math.exp(p[o + j] * scale - l);
          p.fill(0, o + n, o + S);
        }
        // dV += Pᵀ·dO
        transpose(p, rows, S, tb);
        mm.matmul(tb, dO, acc, S, D, rows);
        for (let i = 0; i < S * D; i++) gV[i] += acc[i];
        // dS = P ∘ (dO·Vᵀ - delta) · scale
        mm.matmul(dO, vT, dp, rows, S, D);
        for (let i = 0; i < rows; i++) {
          const o = i * S, dl = delta[q0 + r0 + i];
          for (let j = 0; j < S; j++) dp[o + j] = p[o + j] * (dp[o + j] - dl) * scale;
        }
        // dQ = dS·K;  dK += dSᵀ·Q
        mm.matmul(dp, K, span(gq), rows, D, S);
        transpose(dp, rows, S, tb);
        mm.matmul(tb, Q, acc, S, D, rows);
        for (let i = 0; i < S * D; i++) gK[i] += acc[i];
      }
    }
  }
  return { gq, gk, gv };
}
