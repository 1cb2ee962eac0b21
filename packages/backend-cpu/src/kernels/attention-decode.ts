/**
 * FusedKernels.attentionDecode on the CPU: one decode step of N sequences over their own KV
 * caches, in one call instead of an append and an attention per sequence. The caches are held in
 * place with spare capacity, so the step writes one new key and value row per sequence and reads
 * the filled prefix where it lies: nothing is copied or allocated but the output. Each query: scores
 * in f32, softmax with the row max, then the weighted sum of values. Grouped-query: query head h
 * reads kv head floor(h / (Hq / Hkv)).
 */

export interface DecodeShape {
  N: number;
  Hq: number;
  Hkv: number;
  D: number;
  scale: number;
}

/** One cache storage: element [h, j, d] at offset + h * sh + j * sj + d. */
export interface CacheView {
  data: Float32Array;
  offset: number;
  sh: number;
  sj: number;
}

/** Scores of one query row, reused across calls (grown to the longest cache seen). */
let scores = new Float32Array(256);

/**
 * q [Hq, N, D], kNew, vNew [Hkv, N, D] (contiguous); ks[i], vs[i] sequence i's caches with
 * lengths[i] filled positions. Writes row lengths[i] of each cache, then out [Hq, N, D].
 */
export function attentionDecodeKernel(
  a: DecodeShape, q: Float32Array, kNew: Float32Array, vNew: Float32Array, ks: CacheView[], vs: CacheView[], lengths: readonly number[], out: Float32Array,
): void {
  const { N, Hq, Hkv, D, scale } = a;
  const group = Hq / Hkv;
  for (let i = 0; i < N; i++) {
    const L = lengths[i];
    const S = L + 1; // keys after the append
    const K = ks[i], V = vs[i];
    for (let h = 0; h < Hkv; h++) {
      const src = (h * N + i) * D;
      K.data.set(kNew.subarray(src, src + D), K.offset + h * K.sh + L * K.sj);
      V.data.set(vNew.subarray(src, src + D), V.offset + h * V.sh + L * V.sj);
    }
    if (scores.length < S) scores = new Float32Array(Math.max(S, scores.length * 2));
    const sc = scores;
    for (let hq = 0; hq < Hq; hq++) {
      const kh = Math.floor(hq / group);
      const kd = K.data, k0 = K.offset + kh * K.sh, ksj = K.sj;
      const vd = V.data, v0 = V.offset + kh * V.sh, vsj = V.sj;
      const qo = (hq * N + i) * D;
      let max = -Infinity;
      for (let j = 0; j < S; j++) {
        let s = 0;
        const ko = k0 + j * ksj;
        for (let d = 0; d < D; d++) s += q[qo + d] * kd[ko + d];
        s *= scale;
        sc[j] = s;
        if (s > max) max = s;
      }
      let sum = 0;
      for (let j = 0; j < S; j++) sum += sc[j] = Math.exp(sc[j] - max);
      const inv = 1 / sum;
      out.fill(0, qo, qo + D);
      for (let j = 0; j < S; j++) {
        const p = sc[j] * inv;
        const vo = v0 + j * vsj;
        for (let d = 0; d < D; d++) out[qo + d] += p * vd[vo + d];
      }
    }
  }
}
