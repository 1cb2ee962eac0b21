/**
 * Causal grouped-query attention on the CPU, forward and backward (FusedKernels.attention).
 *
 * The query heads that share a kv head are adjacent in q [B, Hq, T, D], so each (batch, kv head)
 * is one [rep·T, D] block of rows: scores = Q·Kᵀ and P·V go through `AttnOps.gemm` (sgemm with
 * transposes and accumulation on a BLAS; transposed copies on the WASM engine) a block of rows at
 * a time, and exp through the WASM SIMD kernel. Only the row logsumexp survives the forward; backward
 * recomputes P = exp(scale·Q·Kᵀ - lse) block by block, as flash attention does. The transient
 * score block is bounded (ROW_BLOCK_FLOATS), so memory does not grow with T·S.
 */
import type { MatmulEngine } from "../matmul.ts";
import type { ElementwiseWasm } from "../wasm/elementwise.ts";
import { transposeInto } from "./strided.ts";

/** What the kernels need from the backend: a packed gemm, an in-place exp, optional WASM row kernels, arrays. */
export interface AttnOps {
  /** WASM SIMD versions of the row passes below (ElementwiseWasm.attnRows / attnDs); each returns false to decline. */
  rows?: Pick<ElementwiseWasm, "attnRows" | "attnDs"> | null;
  /** C[M,N] (+)= op(A)·op(B) on packed row-major operands (op(A) is [M, K], op(B) [K, N]). */
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, C: Float32Array, accumulate: boolean): void;
  /** x <- e^x for the first n elements. */
  exp(x: Float32Array, n: number): void;
  /**
   * A (pooled) f32 array of n elements, contents undefined, and the way back for a temporary. A
   * fresh array costs a page fault per 4 KiB on first write: on the 2-core VM the 9 MiB an
   * attention backward of d256 allocated took 2,250 faults, about 20 ms of a 300 ms step.
   */
  take(n: number): Float32Array;
  give(a: Float32Array): void;
}

/**
 * AttnOps over a packed-only engine (the WASM matmul): a transposed A is copied transposed into
 * scratch, or, where that moves fewer values, the product is taken as its transpose Cᵀ = op(B)ᵀ·A
 * (LoRA's gB = gyᵀ·h: h and the [outF, r] result are small, gy [N, outF] is not; 704k values per
 * d256 MLP layer before). Accumulation goes through a temporary and `add` (WASM SIMD where given).
 */
export function engineOps(
  mm: MatmulEngine,
  exp: AttnOps["exp"],
  arrays: Pick<AttnOps, "take" | "give">,
  add: (acc: Float32Array, x: Float32Array) => boolean = () => false,
): AttnOps {
  let ta: Float32Array = new Float32Array(0),
    tc: Float32Array = new Float32Array(0);
  const grow = (a: Float32Array, n: number) => (a.length >= n ? a : new Float32Array(n));
  return {
    gemm(transA, transB, M, N, K, A, B, C, accumulate) {
      if (transA && K * N + M * N < M * K) {
        // Cᵀ [N, M] = op(B)ᵀ·A with A read as stored ([K, M]); op(B)ᵀ is B as stored when transB.
        if (!transB) transposeInto(B, K, N, (ta = grow(ta, N * K)), K, 0);
        const Ct = (tc = grow(tc, M * N));
        mm.matmul(transB ? B.subarray(0, N * K) : ta.subarray(0, N * K), A.subarray(0, K * M), Ct.subarray(0, M * N), N, M, K, false);
        for (let i = 0; i < M; i++) {
          const c = i * N;
          if (accumulate) for (let j = 0; j < N; j++) C[c + j] += Ct[j * M + i];
          else for (let j = 0; j < N; j++) C[c + j] = Ct[j * M + i];
        }
        return;
      }
      if (transA) transposeInto(A, K, M, (ta = grow(ta, M * K)), K, 0);
      const out = accumulate ? (tc = grow(tc, M * N)) : C;
      mm.matmul(transA ? ta.subarray(0, M * K) : A.subarray(0, M * K), B.subarray(0, K * N), out.subarray(0, M * N), M, N, K, transB);
      if (accumulate && !add(C.subarray(0, M * N), tc.subarray(0, M * N))) for (let i = 0; i < M * N; i++) C[i] += tc[i];
    },
    exp,
    ...arrays,
  };
}

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

/** Keys visible to row r of a group block (rows are rep heads of T queries each). */
const visible = (a: AttnShape, r: number) => (a.causal ? a.S - a.T + (r % a.T) + 1 : a.S);

/**
 * Causal rows per block: a block of queries only needs the keys its last row sees, so smaller
 * blocks skip more of the masked triangle (blocks of T/b rows compute (b+1)/2b of T x S) at the
 * price of smaller GEMMs. Measured (B8 H4 hs64, OpenBLAS, fwd / fwd+bwd ms), one block of T vs 64:
 * T128 3.0/11.2 -> 2.2/8.0, T512 (blocks of 512 before) 33/96 -> 28/80; 32 was no better.
 */
const CAUSAL_ROWS = 64;

function rowBlock(a: AttnShape): number {
  const R = (a.Hq / a.Hkv) * a.T;
  const rb = Math.min(R, Math.max(16, Math.floor(ROW_BLOCK_FLOATS / a.S)));
  return a.causal ? Math.min(rb, CAUSAL_ROWS) : rb;
}

/**
 * The shape a block of rows [r0, r0 + rows) is computed with: under a causal mask, when the block
 * lies within one head's queries, only the first S - T + t_last + 1 keys, with its rows numbered
 * from 0 as queries of a T = rows problem (each row then sees exactly the keys it saw before).
 */
function blockShape(a: AttnShape, r0: number, rows: number): { s: AttnShape; r: number } {
  if (!a.causal || Math.floor(r0 / a.T) !== Math.floor((r0 + rows - 1) / a.T)) return { s: a, r: r0 };
  const keys = a.S - a.T + ((r0 + rows - 1) % a.T) + 1;
  return { s: { ...a, S: keys, T: rows }, r: 0 };
}

/** P = softmax(scale · scores) over each row's visible keys, in place; zeros beyond; lse per row. */
function softmaxRows(ops: AttnOps, s: Float32Array, rows: number, r0: number, a: AttnShape, lse: Float32Array, lseAt: number): void {
  if (ops.rows?.attnRows("softmax", s.subarray(0, rows * a.S), rows, a.S, a.T, r0, a.causal, a.scale, lse, lseAt)) return;
  const S = a.S;
  const mx = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    const n = visible(a, r0 + i),
      o = i * S;
    let m = -Infinity;
    for (let j = 0; j < n; j++) {
      const x = (s[o + j] *= a.scale);
      if (x > m) m = x;
    }
    for (let j = 0; j < n; j++) s[o + j] -= m;
    mx[i] = m;
  }
  ops.exp(s, rows * S);
  for (let i = 0; i < rows; i++) {
    const n = visible(a, r0 + i),
      o = i * S;
    s.fill(0, o + n, o + S);
    let sum = 0;
    for (let j = 0; j < n; j++) sum += s[o + j];
    const inv = 1 / sum;
    for (let j = 0; j < n; j++) s[o + j] *= inv;
    lse[lseAt + i] = mx[i] + Math.log(sum);
  }
}

export function attentionForward(ops: AttnOps, q: Float32Array, k: Float32Array, v: Float32Array, a: AttnShape): { out: Float32Array; lse: Float32Array } {
  const { B, Hq, Hkv, T, S, D } = a;
  const R = (Hq / Hkv) * T;
  const rb = rowBlock(a);
  const out = ops.take(B * Hq * T * D);
  const lse = ops.take(B * Hq * T);
  const scores = ops.take(rb * S);
  for (let b = 0; b < B; b++) {
    for (let g = 0; g < Hkv; g++) {
      const kv = (b * Hkv + g) * S * D;
      const q0 = (b * Hkv + g) * R; // first row of this group in [B·Hq·T]
      const K = k.subarray(kv, kv + S * D),
        V = v.subarray(kv, kv + S * D);
      for (let r0 = 0; r0 < R; r0 += rb) {
        const rows = Math.min(rb, R - r0);
        const Q = q.subarray((q0 + r0) * D, (q0 + r0 + rows) * D);
        const { s: blk, r } = blockShape(a, r0, rows);
        ops.gemm(false, true, rows, blk.S, D, Q, K, scores, false);
        softmaxRows(ops, scores, rows, r, blk, lse, q0 + r0);
        ops.gemm(false, false, rows, D, blk.S, scores, V, out.subarray((q0 + r0) * D), false);
      }
    }
  }
  ops.give(scores);
  return { out, lse };
}

export function attentionBackward(
  ops: AttnOps,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  out: Float32Array,
  lse: Float32Array,
  gy: Float32Array,
  a: AttnShape,
): { gq: Float32Array; gk: Float32Array; gv: Float32Array } {
  const { B, Hq, Hkv, T, S, D, scale } = a;
  const R = (Hq / Hkv) * T;
  const rb = rowBlock(a);
  const gq = ops.take(q.length); // every row is written by its block's dQ = dS·K
  const gk = ops.take(k.length).fill(0); // dK and dV accumulate over the row blocks
  const gv = ops.take(v.length).fill(0);
  // delta[row] = Σ_d gy·out: the softmax backward's row term, from the output instead of P.
  const delta = ops.take(B * Hq * T);
  for (let r = 0; r < delta.length; r++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += gy[r * D + d] * out[r * D + d];
    delta[r] = s;
  }
  const P = ops.take(rb * S);
  const dP = ops.take(rb * S);
  for (let b = 0; b < B; b++) {
    for (let g = 0; g < Hkv; g++) {
      const kv = (b * Hkv + g) * S * D;
      const q0 = (b * Hkv + g) * R;
      const K = k.subarray(kv, kv + S * D),
        V = v.subarray(kv, kv + S * D);
      const gK = gk.subarray(kv, kv + S * D),
        gV = gv.subarray(kv, kv + S * D);
      for (let r0 = 0; r0 < R; r0 += rb) {
        const rows = Math.min(rb, R - r0);
        const span = (t: Float32Array) => t.subarray((q0 + r0) * D, (q0 + r0 + rows) * D);
        const Q = span(q),
          dO = span(gy);
        // P = exp(scale·Q·Kᵀ - lse), zero where masked; only the keys this block sees (blockShape)
        const { s: blk, r } = blockShape(a, r0, rows),
          Se = blk.S;
        ops.gemm(false, true, rows, Se, D, Q, K, P, false);
        if (!ops.rows?.attnRows("probs", P.subarray(0, rows * Se), rows, Se, blk.T, r, a.causal, scale, lse, q0 + r0)) {
          for (let i = 0; i < rows; i++) {
            const n = visible(blk, r + i),
              o = i * Se,
              l = lse[q0 + r0 + i];
            for (let j = 0; j < n; j++) P[o + j] = P[o + j] * scale - l;
          }
          ops.exp(P, rows * Se);
          for (let i = 0; i < rows; i++) P.fill(0, i * Se + visible(blk, r + i), (i + 1) * Se);
        }
        ops.gemm(true, false, Se, D, rows, P, dO, gV, true); // dV += Pᵀ·dO
        // dS = P ∘ (dO·Vᵀ - delta) · scale
        ops.gemm(false, true, rows, Se, D, dO, V, dP, false);
        if (!ops.rows?.attnDs(P, dP.subarray(0, rows * Se), rows, Se, delta, q0 + r0, scale)) {
          for (let i = 0; i < rows; i++) {
            const o = i * Se,
              dl = delta[q0 + r0 + i];
            for (let j = 0; j < Se; j++) dP[o + j] = P[o + j] * (dP[o + j] - dl) * scale;
          }
        }
        ops.gemm(false, false, rows, D, Se, dP, K, span(gq), false); // dQ = dS·K
        ops.gemm(true, false, Se, D, rows, dP, Q, gK, true); // dK += dSᵀ·Q
      }
    }
  }
  for (const t of [delta, P, dP]) ops.give(t);
  return { gq, gk, gv };
}
