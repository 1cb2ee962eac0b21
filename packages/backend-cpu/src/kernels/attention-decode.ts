/**
 * FusedKernels.attentionDecode on the CPU: one decode step of N sequences over their own KV
 * caches, in one call instead of an append and an attention per sequence. The caches are held in
 * place with spare capacity, so the step writes one new key and value row per sequence and reads
 * the filled prefix where it lies: nothing is copied or allocated but the output. Each query: scores
 * in f32, softmax with the row max, then the weighted sum of values. Grouped-query: query head h
 * reads kv head floor(h / (Hq / Hkv)). wasm/attention-decode.ts runs the same on WASM SIMD.
 */

export interface DecodeShape {
  N: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale: number;
}

/** A 3-D f32 view whose rows are contiguous: element [a, b, d] at offset + a * s0 + b * s1 + d. */
export interface Rows {
  data: Float32Array;
  offset: number;
  s0: number;
  s1: number;
}

/** Scores of one query row, reused across calls (grown to the longest cache seen). */
let scores = new Float32Array(256);

/** Write sequence i's new key and value ([h, i] of kNew, vNew) at row lengths[i] of its caches. */
export function appendRows(a: DecodeShape, kNew: Rows, vNew: Rows, ks: Rows[], vs: Rows[], lengths: readonly number[]): void {
  const { N, Hkv, D } = a;
  for (let i = 0; i < N; i++) {
    for (let h = 0; h < Hkv; h++) {
      copyRow(kNew, h, i, ks[i], h, lengths[i], D);
      copyRow(vNew, h, i, vs[i], h, lengths[i], D);
    }
  }
}

/** Row [a, b] of src to row [c, e] of dst, D elements. */
function copyRow(src: Rows, a: number, b: number, dst: Rows, c: number, e: number, D: number): void {
  const s = src.offset + a * src.s0 + b * src.s1,
    d = dst.offset + c * dst.s0 + e * dst.s1;
  const from = src.data,
    to = dst.data;
  // A short row is cheaper copied by hand than through a subarray.
  if (D <= 32) for (let x = 0; x < D; x++) to[d + x] = from[s + x];
  else to.set(from.subarray(s, s + D), d);
}

/**
 * q [Hq, N, D], kNew, vNew [Hkv, N, D]; ks[i], vs[i] [Hkv, C_i, D] sequence i's caches with lengths[i]
 * filled positions. Writes row lengths[i] of each cache, then out [N, Hq, D] (contiguous).
 */
export function attentionDecodeKernel(
  a: DecodeShape,
  q: Rows,
  kNew: Rows,
  vNew: Rows,
  ks: Rows[],
  vs: Rows[],
  lengths: readonly number[],
  out: Float32Array,
): void {
  const { N, Hq, Hkv, D, scale } = a;
  const group = Hq / Hkv;
  appendRows(a, kNew, vNew, ks, vs, lengths);
  const qd = q.data;
  for (let i = 0; i < N; i++) {
    const S = lengths[i] + 1; // keys after the append
    const K = ks[i],
      V = vs[i];
    if (scores.length < S) scores = new Float32Array(Math.max(S, scores.length * 2));
    const sc = scores;
    for (let hq = 0; hq < Hq; hq++) {
      const kh = Math.floor(hq / group);
      const kd = K.data,
        k0 = K.offset + kh * K.s0,
        ksj = K.s1;
      const vd = V.data,
        v0 = V.offset + kh * V.s0,
        vsj = V.s1;
      const qo = q.offset + hq * q.s0 + i * q.s1;
      const oo = (i * Hq + hq) * D;
      let max = -Infinity;
      for (let j = 0; j < S; j++) {
        let s = 0;
        const ko = k0 + j * ksj;
        for (let d = 0; d < D; d++) s += qd[qo + d] * kd[ko + d];
        s *= scale;
        sc[j] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = 0; j < S; j++) sum += sc[j] = Math.exp(sc[j] - max);
      const inv = 1 / sum;
      out.fill(0, oo, oo + D);
      for (let j = 0; j < S; j++) {
        const p = sc[j] * inv;
        const vo = v0 + j * vsj;
        for (let d = 0; d < D; d++) out[oo + d] += p * vd[vo + d];
      }
    }
  }
}
