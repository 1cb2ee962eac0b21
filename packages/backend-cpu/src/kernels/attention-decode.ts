/**
 * FusedKernels.attentionDecode on the CPU: one decode step of N sequences over their own KV
 * caches, in one call instead of three ops per sequence (two cache concats and an attention).
 * Each sequence's cache is copied once, one position longer (its new key and value appended),
 * into one array shared by the step's new caches (each a view of it: one allocation per call,
 * not two per sequence), and its single query attends over it: scores in f32, softmax with the
 * row max, then the weighted sum of values. Grouped-query: query head h reads kv head
 * floor(h / (Hq / Hkv)).
 */

export interface DecodeShape {
  N: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale: number;
}

/**
 * q [Hq, N, D], kNew, vNew [Hkv, N, D], ks[i], vs[i] [Hkv, S_i, D] -> out [Hq, N, D] and the caches
 * [Hkv, S_i + 1, D]. `alloc(n)` gives an f32 array of n elements (contents undefined).
 */
export function attentionDecodeKernel(
  a: DecodeShape, q: Float32Array, kNew: Float32Array, vNew: Float32Array, ks: Float32Array[], vs: Float32Array[], alloc: (n: number) => Float32Array,
): { out: Float32Array; ks: Float32Array[]; vs: Float32Array[] } {
  const { N, Hq, Hkv, D, scale } = a;
  const group = Hq / Hkv;
  const out = alloc(Hq * N * D);
  const outKs: Float32Array[] = [], outVs: Float32Array[] = [];
  const total = ks.reduce((n, k) => n + k.length + Hkv * D, 0);
  const kAll = new Float32Array(total), vAll = new Float32Array(total);
  let at = 0;
  let scores = new Float32Array(0);
  for (let i = 0; i < N; i++) {
    const S = ks[i].length / (Hkv * D) + 1; // keys after the append
    const grow = (old: Float32Array, fresh: Float32Array, all: Float32Array) => {
      const c = all.subarray(at, at + Hkv * S * D);
      for (let h = 0; h < Hkv; h++) {
        c.set(old.subarray(h * (S - 1) * D, (h + 1) * (S - 1) * D), h * S * D);
        c.set(fresh.subarray((h * N + i) * D, (h * N + i + 1) * D), h * S * D + (S - 1) * D);
      }
      return c;
    };
    const K = grow(ks[i], kNew, kAll), V = grow(vs[i], vNew, vAll);
    at += Hkv * S * D;
    outKs.push(K);
    outVs.push(V);
    if (scores.length < S) scores = new Float32Array(S);
    for (let hq = 0; hq < Hq; hq++) {
      const kv = Math.floor(hq / group) * S * D;
      const qo = (hq * N + i) * D;
      let max = -Infinity;
      for (let j = 0; j < S; j++) {
        let s = 0;
        const ko = kv + j * D;
        for (let d = 0; d < D; d++) s += q[qo + d] * K[ko + d];
        s *= scale;
        scores[j] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = 0; j < S; j++) sum += scores[j] = Math.exp(scores[j] - max);
      const inv = 1 / sum;
      const oo = (hq * N + i) * D;
      out.fill(0, oo, oo + D);
      for (let j = 0; j < S; j++) {
        const p = scores[j] * inv;
        const vo = kv + j * D;
        for (let d = 0; d < D; d++) out[oo + d] += p * V[vo + d];
      }
    }
  }
  return { out, ks: outKs, vs: outVs };
}
