/**
 * Composites with an optional fused kernel. When the backend provides the kernel (Backend.fused)
 * it runs as one op with its own gradient rule below; otherwise the same math is built from
 * primitives and autograd derives the gradient. Both paths are checked against each other by
 * the conformance suite.
 */
import type { FusedKernels, Input } from "./backend.ts";
import type { GradCtx } from "./autograd.ts";
import { isGradEnabled, noGrad, record, registerGradRules } from "./autograd.ts";
import * as ops from "./ops.ts";
import { scope } from "./scope.ts";
import { sameShape } from "./shape.ts";
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
 * The pre-norm residual step: h = x + r and rmsNorm(h, weight), returned as [h, normed]. With the
 * backend's addRmsNorm kernel both come from one pass over the rows; autograd sees the same two
 * nodes as the composite (an add, then rmsNorm on h), so the gradients are the composite's.
 */
export function addRmsNorm(x: Tensor, r: Tensor, weight: Tensor, eps = 1e-5): [Tensor, Tensor] {
  return scope(() => {
    const k = x.backend.fused?.addRmsNorm;
    if (k && x.dtype === r.dtype && sameShape(x.shape, r.shape)) {
      const [xc, rc, wc] = [ensureContig(x), ensureContig(r), ensureContig(weight)];
      const o = k(inp(xc), inp(rc), inp(wc), eps);
      const rows = x.size / x.shape[x.rank - 1];
      const h = record(fromHandle(x.backend, o.h, x.shape, x.dtype), "add", [xc, rc]);
      const rstd = fromHandle(x.backend, o.rstd, [rows], "f32");
      return [h, record(fromHandle(x.backend, o.out, x.shape, x.dtype), "rmsNorm", [h, wc], eps, [rstd])];
    }
    const h = x.add(r);
    return [h, rmsNorm(h, weight, eps)];
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

/**
 * Logits larger than this are never held whole by linearCrossEntropyRows: rows go through the
 * head in chunks of this many bytes of logits (8 MiB: 65 rows of a 32k vocabulary, 13 of 152k).
 */
export const LOGITS_CHUNK_BYTES = 8 * 2 ** 20;

/**
 * Rows per chunk of linearCrossEntropyRows for vocabulary V: whole when the logits fit one chunk,
 * else the fewest chunks that fit, of equal size (256 rows of SmolLM2's 49k vocabulary: 7 x 37
 * rather than 6 x 42 and a 4-row tail that reads the whole 113 MB head for 4 rows).
 */
export const logitsChunkRows = (N: number, V: number, chunkBytes = LOGITS_CHUNK_BYTES) => {
  const most = Math.max(1, Math.floor(chunkBytes / (4 * V)));
  return N <= most ? N : Math.ceil(N / Math.ceil(N / most));
};

/**
 * Per-row cross-entropy of the head's logits h·Wᵀ (+ bias) [N, V] against i32 targets [N],
 * never holding the [N, V] logits or their gradient when they exceed one chunk (Liger's fused
 * linear cross-entropy): each chunk of rows is multiplied, reduced to its loss and logsumexp
 * and dropped; backward recomputes it from h and W. One autograd node; it saves h, W, targets
 * and lse [N]. Logits that fit one chunk (`chunkRows` >= N) take the plain path and are held,
 * as do those of a trainable head with no more rows than its width (see below).
 * h [N, C] and weight [V, C] as torch.nn.Linear stores it; f32 with the fused cross-entropy
 * kernel, otherwise the composite of matmul and crossEntropyRows.
 */
export function linearCrossEntropyRows(h: Tensor, weight: Tensor, bias: Tensor | null, targets: Tensor, ignoreIndex: number, chunkRows?: number): Tensor {
  return scope(() => {
    const [N, C] = h.shape;
    const V = weight.shape[0];
    if (h.rank !== 2 || weight.rank !== 2 || weight.shape[1] !== C || (bias && (bias.rank !== 1 || bias.shape[0] !== V))) {
      throw new RangeError(
        `linearCrossEntropy: h ${h.describe()}, weight ${weight.describe()}${bias ? `, bias ${bias.describe()}` : ""} must be [N, C], [V, C] and [V]`,
      );
    }
    if (targets.rank !== 1 || targets.shape[0] !== N) throw new RangeError(`linearCrossEntropy: targets ${targets.describe()} must be [${N}]`);
    const rows = Math.max(1, Math.floor(chunkRows ?? logitsChunkRows(N, V)));
    const k = h.backend.fused?.crossEntropy;
    const plain = () => crossEntropyRows(headLogits(h, weight, bias), targets, ignoreIndex);
    // A trainable head sums its [V, C] gradient over chunks (the sum, the running total and the
    // new term alive at once: 2·V·C more than one product), which pays only when the logits and
    // their gradient it avoids (2·N·V) are larger: N > C.
    const trainableHead = weight.requiresGrad && isGradEnabled();
    if (!k || rows >= N || (trainableHead && N <= C) || h.dtype !== "f32" || weight.dtype !== "f32" || (bias && bias.dtype !== "f32")) return plain();
    const tc = ensureContig(targets);
    const [loss, lse] = noGrad(() => {
      const losses: Tensor[] = [],
        lses: Tensor[] = [];
      for (let r0 = 0; r0 < N; r0 += rows) {
        const n = Math.min(rows, N - r0);
        const logits = headLogits(h.narrow(0, r0, n), weight, bias);
        const r = k(inp(logits), inp(tc.narrow(0, r0, n)), ignoreIndex);
        logits.dispose(); // now, not at the scope's end: only one chunk of logits is ever alive
        losses.push(fromHandle(h.backend, r.loss, [n], "f32"));
        lses.push(fromHandle(h.backend, r.lse, [n], "f32"));
      }
      return [ops.concat(losses, 0), ops.concat(lses, 0)];
    });
    const inputs = bias ? [h, weight, tc, bias] : [h, weight, tc];
    return record(loss, "linearCrossEntropy", inputs, { ignoreIndex, rows }, [lse]);
  });
}

/** h·Wᵀ (+ bias), contiguous: the fused cross-entropy kernel reads its rows packed. */
function headLogits(h: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  const y = h.matmul(weight.T);
  if (!bias) return y;
  const z = y.add(bias);
  y.dispose(); // chunks run in one scope: drop each intermediate as soon as it is used
  return z;
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
  linearCrossEntropy: {
    save: { inputs: [0, 1, 2, 3] },
    // Chunk by chunk: the logits again, their gradient, then h's rows and W's (and the bias') sums.
    backward: (c: GradCtx, g: Tensor) => {
      const [h, weight, targets] = [saved(c, 0), saved(c, 1), saved(c, 2)];
      const bias = c.saved.length > 4 ? saved(c, 3) : null;
      const lse = saved(c, c.saved.length - 1);
      const { ignoreIndex, rows } = c.params as { ignoreIndex: number; rows: number };
      const k = pair(h, "crossEntropyBackward");
      const gc = ensureContig(g);
      const N = h.shape[0];
      const ghs: Tensor[] = [];
      let gW: Tensor | null = null,
        gb: Tensor | null = null;
      for (let r0 = 0; r0 < N; r0 += rows) {
        const n = Math.min(rows, N - r0);
        const hc = h.narrow(0, r0, n);
        const logits = headLogits(hc, weight, bias);
        const gl = fromHandle(
          h.backend,
          k(inp(logits), inp(targets.narrow(0, r0, n)), inp(lse.narrow(0, r0, n)), inp(gc.narrow(0, r0, n)), ignoreIndex),
          logits.shape,
          "f32",
        );
        logits.dispose();
        if (c.needs[0]) ghs.push(gl.matmul(weight));
        const glT = gl.T; // a view holds gl's storage: free both now, not at the scope's end
        if (c.needs[1]) gW = accumulate(gW, glT.matmul(hc));
        if (bias && c.needs[3]) gb = accumulate(gb, gl.sum(0));
        glT.dispose();
        gl.dispose();
      }
      const gh = c.needs[0] ? (ghs.length === 1 ? ghs[0] : ops.concat(ghs, 0)) : null;
      return bias ? [gh, gW, null, gb] : [gh, gW, null];
    },
  },
};
registerGradRules(fusedGradRules);

/** acc + t, freeing both (a gradient summed over chunks). */
function accumulate(acc: Tensor | null, t: Tensor): Tensor {
  if (!acc) return t;
  const s = acc.add(t);
  acc.dispose();
  t.dispose();
  return s;
}
