/** Composite ops built only from primitives (ops.ts) and fused-capable composites (fused.ts). */
import { noGrad } from "./autograd.ts";
import * as ops from "./ops.ts";
import { scope } from "./scope.ts";
import { type Tensor, rand, tensor } from "./tensor.ts";
import { crossEntropyRows, logSoftmax, rmsNorm, softmax } from "./fused.ts";

export { softmax, logSoftmax, rmsNorm };

export const silu = (x: Tensor): Tensor => scope(() => x.mul(x.sigmoid()));

/** GELU: exact (erf, via a 1.5e-7-accurate rational approximation) or the tanh approximation. */
export function gelu(x: Tensor, approximate: "none" | "tanh" = "none"): Tensor {
  return scope(() => {
    if (approximate === "tanh") {
      const inner = x.add(x.mul(x).mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
      return x.mul(0.5).mul(inner.tanh().add(1));
    }
    return x.mul(0.5).mul(erf(x.mul(Math.SQRT1_2)).add(1));
  });
}

/** erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), differentiable through primitives. */
export function erf(x: Tensor): Tensor {
  return scope(() => {
    const sign = ops.binary("sub", 1, x.lt(0).cast(x.dtype).mul(2));
    const a = x.abs();
    const t = a.mul(0.3275911).add(1).recip();
    const poly = t.mul(1.061405429).add(-1.453152027).mul(t).add(1.421413741).mul(t).add(-0.284496736).mul(t).add(0.254829592).mul(t);
    return sign.mul(ops.binary("sub", 1, poly.mul(a.square().neg().exp())));
  });
}

export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  return scope(() => {
    const mu = x.mean(-1, true);
    const d = x.sub(mu);
    let y = d.mul(d.square().mean(-1, true).add(eps).rsqrt());
    if (weight) y = y.mul(weight);
    if (bias) y = y.add(bias);
    return y;
  });
}

export interface RopeTables {
  cos: Tensor; // [maxPos, headDim/2]
  sin: Tensor;
}

/** cos/sin tables for RoPE; `invFreq` overrides the plain theta schedule (e.g. llama3 scaling). */
export function ropeTables(headDim: number, maxPos: number, theta = 10000, invFreq?: Float32Array, opts: { backend?: Tensor["backend"] } = {}): RopeTables {
  const half = headDim / 2;
  const inv = invFreq ?? Float32Array.from({ length: half }, (_, i) => 1 / theta ** ((2 * i) / headDim));
  const cos = new Float32Array(maxPos * half);
  const sin = new Float32Array(maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * inv[i];
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  }
  return { cos: tensor(cos, { shape: [maxPos, half], backend: opts.backend }), sin: tensor(sin, { shape: [maxPos, half], backend: opts.backend }) };
}

/**
 * Rotary position embedding on x [..., T, D] for positions offset..offset+T-1.
 * "rotate_half" (HF Llama): pairs (x[i], x[i+D/2]); "interleaved" (llama2.c, Meta): pairs (x[2i], x[2i+1]).
 */
export function rope(x: Tensor, tables: RopeTables, offset = 0, mode: "rotate_half" | "interleaved" = "rotate_half"): Tensor {
  return scope(() => {
    const T = x.shape[x.rank - 2];
    const D = x.shape[x.rank - 1];
    const half = D / 2;
    if (offset + T > tables.cos.shape[0]) throw new RangeError(`rope: positions up to ${offset + T} exceed the table (${tables.cos.shape[0]})`);
    const cast = (t: Tensor) => (t.dtype === x.dtype ? t : t.cast(x.dtype));
    const cos = cast(tables.cos.narrow(0, offset, T));
    const sin = cast(tables.sin.narrow(0, offset, T));
    if (mode === "rotate_half") {
      const x1 = x.narrow(-1, 0, half);
      const x2 = x.narrow(-1, half, half);
      return ops.concat([x1.mul(cos).sub(x2.mul(sin)), x2.mul(cos).add(x1.mul(sin))], -1);
    }
    const pairs = x.reshape([...x.shape.slice(0, -1), half, 2]);
    const x1 = pairs.narrow(-1, 0, 1).squeeze(-1);
    const x2 = pairs.narrow(-1, 1, 1).squeeze(-1);
    return ops.stack([x1.mul(cos).sub(x2.mul(sin)), x1.mul(sin).add(x2.mul(cos))], -1).reshape([...x.shape]);
  });
}

/**
 * Causal scaled-dot-product attention with grouped-query heads.
 * q [B, Hq, T, D]; k, v [B, Hkv, S, D] with Hq % Hkv == 0. Query t attends to keys
 * 0..(S - T + t): the last T of S positions are the queries (KV cache friendly).
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): Tensor {
  return scope(() => {
    const [B, Hq, T, D] = q.shape;
    const [, Hkv, S] = k.shape;
    if (Hq % Hkv !== 0) throw new RangeError(`attention: ${Hq} query heads not a multiple of ${Hkv} kv heads`);
    const rep = Hq / Hkv;
    const repeat = (t: Tensor) =>
      rep === 1 ? t : t.reshape([B, Hkv, 1, S, D]).expand([B, Hkv, rep, S, D]).reshape([B, Hq, S, D]);
    const kk = repeat(k);
    const vv = repeat(v);
    let scores = q.matmul(kk.transpose(-2, -1)).mul(opts.scale ?? 1 / Math.sqrt(D));
    if (opts.causal ?? true) {
      const allowed = noGrad(() => causalMask(q, T, S));
      scores = ops.where(allowed, scores, -Infinity);
    }
    return softmax(scores, -1).matmul(vv);
  });
}

/** u8 [T, S]: 1 where key s may be seen by query t (s <= S - T + t). */
export function causalMask(like: Tensor, T: number, S: number): Tensor {
  const m = new Uint8Array(T * S);
  for (let t = 0; t < T; t++) for (let s = 0; s <= S - T + t; s++) m[t * S + s] = 1;
  return tensor(m, { shape: [T, S], dtype: "u8", backend: like.backend });
}

/** Cross-entropy of logits [..., V] vs i32 targets [...]; `ignoreIndex` rows are skipped in loss and mean. */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  opts: { ignoreIndex?: number; reduction?: "mean" | "sum" | "none" } = {},
): Tensor {
  return scope(() => {
    const ignore = opts.ignoreIndex ?? -100;
    const V = logits.shape[logits.rank - 1];
    const rows = crossEntropyRows(logits.reshape([-1, V]), targets.reshape([-1]), ignore);
    const reduction = opts.reduction ?? "mean";
    if (reduction === "none") return rows.reshape([...targets.shape]);
    const total = rows.sum();
    if (reduction === "sum") return total;
    const count = noGrad(() => targets.eq(ignore).eq(0).cast("f32").sum());
    return total.div(count.maximum(1).cast(logits.dtype));
  });
}

/**
 * Inverted dropout with a reproducible mask: element i keeps iff uniformAt(seed, offset + i) >= p.
 * Returns x unchanged (an alias) when p == 0.
 */
export function dropout(x: Tensor, p: number, seed: number, offset = 0): Tensor {
  if (p < 0 || p >= 1) throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  if (p === 0) return x.contiguous();
  return scope(() => {
    const u = rand(x.shape, seed, offset, { backend: x.backend });
    const keepMask = u.lt(p).eq(0).cast(x.dtype);
    return x.mul(keepMask).mul(1 / (1 - p));
  });
}
