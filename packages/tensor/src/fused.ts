/**
 * Composites with an optional fused kernel. When the backend provides the kernel (Backend.fused)
 * it runs as one op with its own gradient rule below; otherwise the same math is built from
 * primitives and autograd derives the gradient. Both paths are checked against each other by
 * the conformance suite.
 */
import type { FusedKernels, Input } from "./backend.ts";
import type { GradCtx } from "./autograd.ts";
import { noGrad, record } from "./autograd.ts";
import * as ops from "./ops.ts";
import { scope } from "./scope.ts";
import { type Tensor, fromHandle } from "./tensor.ts";

const lastAxis = (x: Tensor, axis: number) => axis === -1 || axis === x.rank - 1;
/** Fused kernels take contiguous inputs (row-major from their view's offset). */
export const inp = (t: Tensor): Input => t.input;
export const ensureContig = (t: Tensor) => (t.isContiguous ? t : ops.contiguous(t));

export function softmax(x: Tensor, axis = -1): Tensor {
  return scope(() => {
    const k = x.backend.fused?.softmax;
    if (k && lastAxis(x, axis)) {
      const xc = ensureContig(x);
      return record(fromHandle(x.backend, k(inp(xc)), x.shape, x.dtype), "softmax", [xc]);
    }
    const m = noGrad(() => x.max(axis, true));
    const e = x.sub(m).exp();
    return e.div(e.sum(axis, true));
  });
}

export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return scope(() => {
    const k = x.backend.fused?.logSoftmax;
    if (k && lastAxis(x, axis)) {
      const xc = ensureContig(x);
      return record(fromHandle(x.backend, k(inp(xc)), x.shape, x.dtype), "logSoftmax", [xc]);
    }
    const m = noGrad(() => x.max(axis, true));
    const s = x.sub(m);
    return s.sub(s.exp().sum(axis, true).log());
  });
}

/** RMSNorm over the last axis: x * rsqrt(mean(x^2) + eps) * weight, computed in f32. */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-5): Tensor {
  return scope(() => {
    const k = x.backend.fused?.rmsNorm;
    if (k) {
      const xc = ensureContig(x);
      const wc = ensureContig(weight);
      const r = k(inp(xc), inp(wc), eps);
      const rows = x.size / x.shape[x.rank - 1];
      const rstd = fromHandle(x.backend, r.rstd, [rows], "f32");
      return record(fromHandle(x.backend, r.out, x.shape, x.dtype), "rmsNorm", [xc, wc], eps, [rstd]);
    }
    const xf = x.dtype === "f32" ? x : x.cast("f32");
    const rstd = xf.square().mean(-1, true).add(eps).rsqrt();
    const y = xf.mul(rstd);
    return (x.dtype === "f32" ? y : y.cast(x.dtype)).mul(weight);
  });
}

/**
 * Per-row cross-entropy of logits [N, V] against i32 targets [N]; rows whose target is
 * `ignoreIndex` contribute 0. Returns [N] (reduction happens in functional.crossEntropy).
 */
export function crossEntropyRows(logits: Tensor, targets: Tensor, ignoreIndex: number): Tensor {
  return scope(() => {
    if (logits.rank !== 2 || targets.rank !== 1 || targets.shape[0] !== logits.shape[0]) {
      throw new RangeError(`crossEntropy: logits ${logits.describe()} and targets ${targets.describe()} must be [N, V] and [N]`);
    }
    if (targets.dtype !== "i32") throw new TypeError(`crossEntropy: targets must be i32, got ${targets.describe()}`);
    const k = logits.backend.fused?.crossEntropy;
    if (k) {
      const lc = ensureContig(logits);
      const tc = ensureContig(targets);
      const r = k(inp(lc), inp(tc), ignoreIndex);
      const lse = fromHandle(logits.backend, r.lse, [logits.shape[0]], "f32");
      return record(fromHandle(logits.backend, r.loss, [logits.shape[0]], logits.dtype), "crossEntropy", [lc, tc], ignoreIndex, [lse]);
    }
    const valid = targets.eq(ignoreIndex).eq(0);
    const safe = ops.where(valid, targets, 0).reshape([-1, 1]);
    const picked = ops.gather(logSoftmax(logits, -1), safe, 1).reshape([-1]);
    return picked.neg().mul(valid.cast(logits.dtype));
  });
}

export const saved = (c: GradCtx, i: number) => c.saved[i] as Tensor;
/**
 * A fused kernel a gradient rule needs: the backward half of a pair, or dropout regenerating its
 * mask. A rule runs only after its forward kernel ran, and a backend has both halves of a pair or
 * neither (checkFusedPairs), so the rules carry no primitive fallback.
 */
export function pair<K extends keyof FusedKernels>(t: Tensor, name: K): NonNullable<FusedKernels[K]> {
  const k = t.backend.fused?.[name];
  if (!k) throw new Error(`backend ${t.backend.name} ran a fused forward kernel but has no ${name} (see checkFusedPairs)`);
  return k as NonNullable<FusedKernels[K]>;
}

export const fusedGradRules = {
  softmax: {
    save: { out: true },
    backward: (c: GradCtx, g: Tensor) => {
      const y = c.out as Tensor;
      return [fromHandle(y.backend, pair(y, "softmaxBackward")(inp(y), inp(ensureContig(g))), y.shape, y.dtype)];
    },
  },
  logSoftmax: {
    save: { out: true },
    backward: (c: GradCtx, g: Tensor) => {
      const y = c.out as Tensor;
      return [fromHandle(y.backend, pair(y, "logSoftmaxBackward")(inp(y), inp(ensureContig(g))), y.shape, y.dtype)];
    },
  },
  rmsNorm: {
    save: { inputs: [0, 1] },
    backward: (c: GradCtx, g: Tensor) => {
      const [x, w, rstd] = [saved(c, 0), saved(c, 1), saved(c, 2)];
      const r = pair(x, "rmsNormBackward")(inp(x), inp(w), inp(rstd), inp(ensureContig(g)));
      return [fromHandle(x.backend, r.gx, x.shape, x.dtype), fromHandle(x.backend, r.gw, w.shape, w.dtype)];
    },
  },
  crossEntropy: {
    save: { inputs: [0, 1] },
    backward: (c: GradCtx, g: Tensor) => {
      const [logits, targets, lse] = [saved(c, 0), saved(c, 1), saved(c, 2)];
      const ignoreIndex = c.params as number;
      const k = pair(logits, "crossEntropyBackward");
      return [fromHandle(logits.backend, k(inp(logits), inp(targets), inp(lse), inp(ensureContig(g)), ignoreIndex), logits.shape, logits.dtype), null];
    },
  },
};
