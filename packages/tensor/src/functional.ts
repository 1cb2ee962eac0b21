/** Composite ops built only from primitives (ops.ts) and fused-capable composites (fused.ts). */
import { noGrad } from "./autograd.ts";
import * as ops from "./ops.ts";
import { scope } from "./scope.ts";
import { type Tensor, tensor } from "./tensor.ts";
import { addRmsNorm, crossEntropyRows, linearCrossEntropyRows, logSoftmax, rmsNorm, softmax } from "./fused.ts";

export { softmax, logSoftmax, rmsNorm, addRmsNorm };
export {
  type DecodeCache,
  type DropoutParams,
  type RopeTables,
  adamwStep,
  attention,
  attentionDecode,
  causalMask,
  dropout,
  addLoraRows,
  loraBranch,
  loraLinear,
  loraRows,
  rope,
  sumOfSquares,
  swiglu,
} from "./fused-nn.ts";
import type { RopeTables } from "./fused-nn.ts";

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

/** Cross-entropy of logits [..., V] vs i32 targets [...]; `ignoreIndex` rows are skipped in loss and mean. */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: { ignoreIndex?: number; reduction?: "mean" | "sum" | "none" } = {}): Tensor {
  return scope(() => {
    const ignore = opts.ignoreIndex ?? -100;
    const V = logits.shape[logits.rank - 1];
    return reduceRows(crossEntropyRows(logits.reshape([-1, V]), targets.reshape([-1]), ignore), targets, ignore, opts.reduction);
  });
}

/**
 * crossEntropy(h·Wᵀ + bias, targets) for hidden states h [..., C] and a head weight [V, C]
 * (torch.nn.Linear's layout), without holding the [rows, V] logits when they are larger than
 * one chunk (fused.ts linearCrossEntropyRows): what a real vocabulary (32k-152k) needs.
 */
export function linearCrossEntropy(
  h: Tensor,
  weight: Tensor,
  targets: Tensor,
  opts: { bias?: Tensor | null; ignoreIndex?: number; reduction?: "mean" | "sum" | "none"; chunkRows?: number } = {},
): Tensor {
  return scope(() => {
    const ignore = opts.ignoreIndex ?? -100;
    const C = h.shape[h.rank - 1];
    const rows = linearCrossEntropyRows(h.reshape([-1, C]), weight, opts.bias ?? null, targets.reshape([-1]), ignore, opts.chunkRows);
    return reduceRows(rows, targets, ignore, opts.reduction);
  });
}

function reduceRows(rows: Tensor, targets: Tensor, ignore: number, reduction: "mean" | "sum" | "none" = "mean"): Tensor {
  if (reduction === "none") return rows.reshape([...targets.shape]);
  const total = rows.sum();
  if (reduction === "sum") return total;
  const count = noGrad(() => targets.eq(ignore).eq(0).cast("f32").sum());
  return total.div(count.maximum(1).cast(rows.dtype));
}
