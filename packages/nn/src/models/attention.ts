/**
 * Sliding-window causal attention (Mistral; Qwen2/Qwen3 layers at or past max_window_layers),
 * built on the fused causal `attention` where it can be and a masked composite where it cannot.
 *
 * The window follows transformers' masking_utils: query at position p sees keys j with
 * p - window < j <= p (`window` keys, itself included).
 */
import { type Tensor, attention, concat, fromHandle, noGrad, scope, softmax, where } from "@lowrank/tensor";

export interface WindowOptions {
  /**
   * Queries per block past the first `window` positions; a block's scores are block x (block + window - 1),
   * and backward keeps them all, so smaller blocks hold less (T x (block + window) in all) at more dispatches. Default 128.
   */
  block?: number;
}

/**
 * q [B, Hq, T, D]; k, v [B, Hkv, S, D]; the queries are the last T of S positions (KV cache
 * friendly, as in `attention`). Three cases, cheapest first:
 * - S <= window: no query has more keys than the window, plain fused causal attention;
 * - T == 1 (a generation step): the last `window` keys, fused;
 * - otherwise: the queries before position `window` in one fused causal call (their windows
 *   hold every earlier key), then blocks of queries, each over only the keys its window reaches,
 *   as a masked softmax, so the score matrix is never T x S (training on sequences much longer
 *   than the window stays linear in T). A fused kernel with a window argument would do the
 *   blocks without the scores.
 */
export function slidingWindowAttention(q: Tensor, k: Tensor, v: Tensor, window: number, opts: WindowOptions = {}): Tensor {
  return scope(() => {
    const T = q.shape[2];
    const S = k.shape[2];
    if (S <= window) return attention(q, k, v);
    if (T === 1) return attention(q, k.narrow(2, S - window, window), v.narrow(2, S - window, window));
    const block = opts.block ?? 128;
    const outs: Tensor[] = [];
    for (let t0 = 0, n = 0; t0 < T; t0 += n) {
      const first = S - T + t0; // position of the block's first query
      // Queries before position `window` see every earlier key: one fused causal call covers them all.
      n = Math.min(T - t0, first < window ? window - first : block);
      const kStart = Math.max(0, first - window + 1);
      const kLen = first + n - kStart;
      const qb = q.narrow(2, t0, n);
      const kb = k.narrow(2, kStart, kLen);
      const vb = v.narrow(2, kStart, kLen);
      // Every key the block reaches is inside each query's window: the fused causal kernel is exact.
      outs.push(kLen <= window ? attention(qb, kb, vb) : maskedAttention(qb, kb, vb, windowMask(q, n, first, kStart, kLen, window)));
    }
    return outs.length === 1 ? outs[0] : concat(outs, 2);
  });
}

/** softmax(q kᵀ / sqrt(D) masked) v with grouped-query heads; half precision is computed in f32. */
function maskedAttention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor): Tensor {
  return scope(() => {
    const [B, Hq, , D] = q.shape;
    const [, Hkv, S] = k.shape;
    const rep = Hq / Hkv;
    const f32 = (t: Tensor) => (t.dtype === "f32" ? t : t.cast("f32"));
    const repeat = (t: Tensor) => (rep === 1 ? t : t.reshape([B, Hkv, 1, S, D]).expand([B, Hkv, rep, S, D]).reshape([B, Hq, S, D]));
    const scores = where(
      allowed,
      f32(q)
        .matmul(repeat(f32(k)).transpose(-2, -1))
        .mul(1 / Math.sqrt(D)),
      -Infinity,
    );
    const y = softmax(scores, -1).matmul(repeat(f32(v)));
    return y.dtype === q.dtype ? y : y.cast(q.dtype);
  });
}

/** u8 [n, kLen]: 1 where key kStart + j is within the window of the query at position first + t. */
function windowMask(like: Tensor, n: number, first: number, kStart: number, kLen: number, window: number): Tensor {
  return noGrad(() => {
    const m = new Uint8Array(n * kLen);
    for (let t = 0; t < n; t++) {
      const p = first + t;
      for (let j = Math.max(kStart, p - window + 1); j <= p; j++) m[t * kLen + (j - kStart)] = 1;
    }
    return fromHandle(like.backend, like.backend.upload(m, "u8"), [n, kLen], "u8");
  });
}
