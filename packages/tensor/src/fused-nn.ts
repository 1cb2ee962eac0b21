/**
 * Fused composites of the transformer block and its training: dropout, SwiGLU, RoPE, attention,
 * the LoRA branch and the AdamW update. With the backend's kernel pair (FusedKernels) each runs as
 * one op with its gradient rule below, saving only what backward cannot cheaply recompute;
 * without it the same math is built from primitives, the reference the conformance suite checks
 * every kernel against (forward values and gradcheck on both paths).
 */
import type { AdamWHyper, DropoutParams, Input } from "./backend.ts";
import type { GradCtx } from "./autograd.ts";
import { isGradEnabled, noGrad, record, registerGradRules } from "./autograd.ts";
import * as ops from "./ops.ts";
import { scope } from "./scope.ts";
import { sameShape } from "./shape.ts";
import { type Tensor, fromHandle, rand } from "./tensor.ts";
import { ensureContig as dense, inp, pair, saved, softmax } from "./fused.ts";

// ---------------------------------------------------------------- dropout

export type { DropoutParams };

/**
 * Inverted dropout with a reproducible mask: element i keeps iff uniformAt(seed, offset + i) >= p.
 * Fused, the mask is regenerated in backward and never stored. p == 0 returns a contiguous alias.
 */
export function dropout(x: Tensor, p: number, seed: number, offset = 0): Tensor {
  if (!(p >= 0 && p < 1)) throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  if (p === 0) return x.contiguous();
  return scope(() => {
    const k = x.backend.fused?.dropout;
    if (k) {
      const xc = dense(x);
      const params: DropoutParams = { p, seed, offset };
      return record(fromHandle(x.backend, k(inp(xc), p, seed, offset), x.shape, x.dtype), "dropout", [xc], params);
    }
    const u = rand(x.shape, seed, offset, { backend: x.backend });
    const keepMask = u.lt(p).eq(0).cast(x.dtype);
    return x.mul(keepMask).mul(1 / (1 - p));
  });
}

/** The fused dropout kernel on x (the backward of dropout, and the LoRA branch's regeneration). */
function dropoutKernel(x: Tensor, d: DropoutParams): Tensor {
  return fromHandle(x.backend, pair(x, "dropout")(inp(dense(x)), d.p, d.seed, d.offset), x.shape, x.dtype);
}

// ---------------------------------------------------------------- SwiGLU

/** silu(gate) * up, the Llama MLP's gate. */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  return scope(() => {
    const k = gate.backend.fused?.swiglu;
    if (k && sameShape(gate.shape, up.shape) && gate.dtype === up.dtype) {
      const g = dense(gate);
      const u = dense(up);
      return record(fromHandle(gate.backend, k(inp(g), inp(u)), gate.shape, gate.dtype), "swiglu", [g, u]);
    }
    return gate.mul(gate.sigmoid()).mul(up);
  });
}

// ---------------------------------------------------------------- RoPE

export interface RopeTables {
  cos: Tensor; // [maxPos, headDim/2]
  sin: Tensor;
}

/**
 * Rotary position embedding on x [..., T, D] for positions offset..offset+T-1.
 * "rotate_half" (HF Llama): pairs (x[i], x[i+D/2]); "interleaved" (llama2.c, Meta): pairs (x[2i], x[2i+1]).
 * Fused, x may be a strided view (heads permuted out of the projection): the kernel reads it in
 * place and writes the rotated heads contiguously.
 */
export function rope(x: Tensor, tables: RopeTables, offset = 0, mode: "rotate_half" | "interleaved" = "rotate_half"): Tensor {
  return scope(() => {
    const T = x.shape[x.rank - 2];
    const D = x.shape[x.rank - 1];
    const half = D / 2;
    if (offset + T > tables.cos.shape[0]) throw new RangeError(`rope: positions up to ${offset + T} exceed the table (${tables.cos.shape[0]})`);
    if (tables.cos.shape[1] !== half) throw new RangeError(`rope: table rows hold ${tables.cos.shape[1]} frequencies, head size ${D} needs ${half}`);
    const k = x.backend.fused?.rope;
    if (k && tables.cos.dtype === "f32") {
      // Fresh [T, D/2] rows (tiny), so kernels read the tables from element 0.
      const rows = (t: Tensor) => fromHandle(x.backend, x.backend.copy(t.narrow(0, offset, T).input), [T, half], "f32");
      const cos = rows(tables.cos);
      const sin = rows(tables.sin);
      const interleaved = mode === "interleaved";
      const y = fromHandle(x.backend, k(inp(x), inp(cos), inp(sin), interleaved), x.shape, x.dtype);
      return record(y, "rope", [x], interleaved, [cos, sin]);
    }
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

// ---------------------------------------------------------------- attention

/**
 * Causal scaled-dot-product attention with grouped-query heads.
 * q [B, Hq, T, D]; k, v [B, Hkv, S, D] with Hq % Hkv == 0. Query t attends to keys
 * 0..(S - T + t): the last T of S positions are the queries (KV cache friendly).
 * Fused (flash-style), backward keeps q, k, v, the output and one logsumexp per row: no T x S matrix.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): Tensor {
  return scope(() => {
    const [B, Hq, T, D] = q.shape;
    const [, Hkv, S] = k.shape;
    if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4 || k.shape[0] !== B || v.shape[0] !== B || k.shape[3] !== D || !sameShape(k.shape, v.shape)) {
      throw new RangeError(`attention: q ${q.describe()}, k ${k.describe()}, v ${v.describe()} must be [B, Hq, T, D] and [B, Hkv, S, D]`);
    }
    if (Hq % Hkv !== 0) throw new RangeError(`attention: ${Hq} query heads not a multiple of ${Hkv} kv heads`);
    const causal = opts.causal ?? true;
    if (causal && S < T) throw new RangeError(`attention: causal attention needs at least as many keys (${S}) as queries (${T})`);
    const scale = opts.scale ?? 1 / Math.sqrt(D);
    const kern = q.backend.fused?.attention;
    if (kern && q.dtype === k.dtype && q.dtype === v.dtype) {
      const [qc, kc, vc] = [dense(q), dense(k), dense(v)];
      const r = kern(inp(qc), inp(kc), inp(vc), causal, scale);
      const lse = fromHandle(q.backend, r.lse, [B, Hq, T], "f32");
      return record(fromHandle(q.backend, r.out, q.shape, q.dtype), "attention", [qc, kc, vc], { causal, scale }, [lse]);
    }
    const rep = Hq / Hkv;
    const repeat = (t: Tensor) => (rep === 1 ? t : t.reshape([B, Hkv, 1, S, D]).expand([B, Hkv, rep, S, D]).reshape([B, Hq, S, D]));
    let scores = q.matmul(repeat(k).transpose(-2, -1)).mul(scale);
    if (causal) {
      const allowed = noGrad(() => causalMask(q, T, S));
      scores = ops.where(allowed, scores, -Infinity);
    }
    return softmax(scores, -1).matmul(repeat(v));
  });
}

/** u8 [T, S]: 1 where key s may be seen by query t (s <= S - T + t). */
export function causalMask(like: Tensor, T: number, S: number): Tensor {
  const m = new Uint8Array(T * S);
  for (let t = 0; t < T; t++) m.fill(1, t * S, t * S + S - T + t + 1);
  return fromHandle(like.backend, like.backend.upload(m, "u8"), [T, S], "u8");
}

// ---------------------------------------------------------------- the LoRA branch

/**
 * scaling · B(A(dropout(x))) for x [N, in], A [r, in], B [out, r] (PEFT's lora.Linear branch).
 * With a fused dropout kernel it is one autograd node that saves only the [N, r] projection: the
 * dropped input is regenerated from x (which the base layer keeps anyway) in backward, so
 * dropout adds no activation to a LoRA step. Otherwise it is the composite of its parts.
 */
export function loraBranch(x: Tensor, A: Tensor, B: Tensor, scaling: number, drop: DropoutParams | null): Tensor {
  return scope(() => {
    if (drop && drop.p === 0) drop = null;
    const fusedDrop = x.backend.fused?.dropout;
    if ((drop && !fusedDrop) || x.rank !== 2) {
      const xd = drop ? dropout(x, drop.p, drop.seed, drop.offset) : x;
      return xd.matmul(A.T).matmul(B.T).mul(scaling);
    }
    const grad = isGradEnabled();
    const [h, y] = noGrad(() => {
      const xd = drop ? dropoutKernel(x, drop) : x;
      const hs = xd.matmul(A.T).mul(scaling); // [N, r]: scaling the thin side is cheap, and backward reuses it for gB
      return [hs, hs.matmul(B.T)];
    });
    return grad ? record(y, "loraBranch", [x, A, B], { scaling, drop }, [h]) : y;
  });
}

const loraBranchRule = {
  save: { inputs: [0, 1, 2] },
  backward: (c: GradCtx, g: Tensor) => {
    const [x, A, B, h] = [saved(c, 0), saved(c, 1), saved(c, 2), saved(c, 3)];
    const { scaling, drop } = c.params as { scaling: number; drop: DropoutParams | null };
    const gB = c.needs[2] ? g.T.matmul(h) : null; // [out, r]
    const gh = g.matmul(B).mul(scaling); // [N, r]
    let gA: Tensor | null = null;
    if (c.needs[1]) {
      const xd = drop ? dropoutKernel(x, drop) : x;
      gA = gh.T.matmul(xd);
    }
    let gx: Tensor | null = null;
    if (c.needs[0]) {
      const gxd = gh.matmul(A);
      gx = drop ? dropoutKernel(gxd, drop) : gxd;
    }
    return [gx, gA, gB];
  },
};

/**
 * A LoRA layer over a dense linear base: x Wᵀ (+ bias) + scaling · B(A(dropout(x))) for x [N, in],
 * W [out, in]. With the backend's loraLinear pair it is one node (Unsloth's fused LoRA matmuls):
 * two passes forward and four backward, base and branch summed in one accumulator, the dropout
 * mask and the scaling applied in the matmuls' loads and stores, so base output, branch output,
 * dropped input and the two input gradients never exist as separate tensors. It saves x and
 * h = scaling · dropout(x) Aᵀ [N, r], like loraBranch. The base must be frozen (no gradient for W
 * or bias) and everything f32; otherwise, or without the pair, it is the base matmul plus loraBranch.
 */
export function loraLinear(x: Tensor, weight: Tensor, bias: Tensor | null, A: Tensor, B: Tensor, scaling: number, drop: DropoutParams | null): Tensor {
  return scope(() => {
    if (drop && drop.p === 0) drop = null;
    const k = x.backend.fused?.loraLinear;
    const f32 = [x, weight, A, B, ...(bias ? [bias] : [])].every((t) => t.dtype === "f32");
    if (!k || !f32 || x.rank !== 2 || weight.requiresGrad || bias?.requiresGrad) {
      let y = x.matmul(weight.T);
      if (bias) y = y.add(bias);
      return y.add(loraBranch(x, A, B, scaling, drop));
    }
    const [N, out, r] = [x.shape[0], weight.shape[0], A.shape[0]];
    const [xc, wc, ac, bc] = [dense(x), dense(weight), dense(A), dense(B)];
    const bb = bias ? dense(bias) : null;
    const o = k(inp(xc), inp(wc), bb ? inp(bb) : null, inp(ac), inp(bc), scaling, drop);
    const y = fromHandle(x.backend, o.y, [N, out], "f32");
    const h = fromHandle(x.backend, o.h, [N, r], "f32");
    return isGradEnabled() ? record(y, "loraLinear", [xc, wc, ac, bc], { scaling, drop }, [h]) : y;
  });
}

/**
 * x Wᵀ (+ bias) + ((x Aᵀ) ⊙ mask) Bᵀ: a dense base and several LoRA adapters at once, each row its
 * own (A, B the adapters' stacked factors, mask each row's scaling on its adapter's block). One
 * kernel where the backend has loraRows (FusedKernels), else the same four ops. Inference only.
 */
export function loraRows(x: Tensor, weight: Tensor, bias: Tensor | null, A: Tensor, B: Tensor, mask: Tensor): Tensor {
  return noGrad(() =>
    scope(() => {
      const k = x.backend.fused?.loraRows;
      if (k && x.rank === 2 && [x, weight, A, B, mask, ...(bias ? [bias] : [])].every((t) => t.dtype === "f32")) {
        return fromHandle(
          x.backend,
          k(inp(dense(x)), inp(dense(weight)), bias ? inp(dense(bias)) : null, inp(dense(A)), inp(dense(B)), inp(dense(mask))),
          [x.shape[0], weight.shape[0]],
          "f32",
        );
      }
      const y = x.matmul(weight.T);
      return addLoraRows(bias ? y.add(bias) : y, x, A, B, mask);
    }),
  );
}

/** y + ((x Aᵀ) ⊙ mask) Bᵀ: loraRows' branches added to a base output y [N, out] computed elsewhere (any base). */
export function addLoraRows(y: Tensor, x: Tensor, A: Tensor, B: Tensor, mask: Tensor): Tensor {
  return scope(() => {
    const xs = x.dtype === A.dtype ? x : x.cast(A.dtype);
    const d = xs.matmul(A.T).mul(mask).matmul(B.T);
    return y.add(d.dtype === y.dtype ? d : d.cast(y.dtype));
  });
}

const loraLinearRule = {
  save: { inputs: [0, 1, 2, 3] },
  backward: (c: GradCtx, g: Tensor) => {
    const [x, W, A, B, h] = [saved(c, 0), saved(c, 1), saved(c, 2), saved(c, 3), saved(c, 4)];
    const { scaling, drop } = c.params as { scaling: number; drop: DropoutParams | null };
    const o = pair(x, "loraLinearBackward")(inp(x), inp(W), inp(A), inp(B), inp(h), inp(dense(g)), scaling, drop);
    const be = x.backend;
    return [fromHandle(be, o.gx, x.shape, "f32"), null, fromHandle(be, o.gA, A.shape, "f32"), fromHandle(be, o.gB, B.shape, "f32")];
  },
};

// ---------------------------------------------------------------- AdamW

/**
 * One AdamW step on parameter p with gradient g and state m, v (all f32 [same shape]), torch
 * semantics (FusedKernels.adamw). Fused, it updates p, m and v in place with no temporaries;
 * otherwise it computes new tensors with primitives and assigns them.
 */
export function adamwStep(p: Tensor, g: Tensor, m: Tensor, v: Tensor, h: AdamWHyper, decay: boolean): void {
  noGrad(() =>
    scope(() => {
      const k = p.backend.fused?.adamw;
      const hd = decay ? h : { ...h, weightDecay: 0 };
      const ownsAll = [p, m, v].every((t) => t.dtype === "f32" && t.isContiguous && t.offset === 0 && t.size === t.storage.size);
      if (k && ownsAll && g.dtype === "f32") {
        k(p.storage.handle, inp(dense(g)), m.storage.handle, v.storage.handle, p.size, hd);
        return;
      }
      const g32 = g.dtype === "f32" ? g : g.cast("f32");
      const p32 = p.dtype === "f32" ? p : p.cast("f32");
      const m1 = m.mul(h.beta1).add(g32.mul(1 - h.beta1));
      const v1 = v.mul(h.beta2).add(g32.square().mul(1 - h.beta2));
      m.assign(m1);
      v.assign(v1);
      const decayed = hd.weightDecay > 0 ? p32.mul(1 - h.lr * hd.weightDecay) : p32;
      const next = decayed.sub(m1.div(v1.sqrt().div(h.sqrtBc2).add(h.eps)).mul(h.lr / h.bc1));
      p.assign(next.dtype === p.dtype ? next : next.cast(p.dtype));
    }),
  );
}

/**
 * sum(x²) over all elements of all xs as an f32 scalar (no gradient): the backend's multi-tensor
 * kernel when it has one, else per-tensor square-sum-add. For the global gradient norm.
 */
export function sumOfSquares(xs: readonly Tensor[]): Tensor {
  if (!xs.length) throw new RangeError("sumOfSquares: expected at least one tensor");
  return noGrad(() =>
    scope(() => {
      const k = xs[0].backend.fused?.sumSquares;
      if (k) return fromHandle(xs[0].backend, k(xs.map((x) => inp(dense(x)))), [], "f32");
      let acc: Tensor | null = null;
      for (const x of xs) {
        const s = (x.dtype === "f32" ? x : x.cast("f32")).square().sum();
        acc = acc ? acc.add(s) : s;
      }
      return acc as Tensor;
    }),
  );
}

/** A sequence's KV cache for attentionDecode: storages [1, Hkv, C, D] of which the first `length` positions are filled. */
export interface DecodeCache {
  k: Tensor;
  v: Tensor;
  length: number;
}

/**
 * A decode step of N sequences, each over its own cache (FusedKernels.attentionDecode): q [1, Hq, N, D],
 * k and v [1, Hkv, N, D] (sequence i in position i). Writes sequence i's new key and value into its
 * cache at position caches[i].length, in place (the cache must have room: length < C), and returns
 * out [1, Hq, N, D], each query over its length + 1 cached keys; fused, out is a view of a
 * [1, N, Hq, D] storage, so the permute back to tokens that the output projection wants costs no copy.
 * Without the kernel (or outside f32) each sequence appends with copyInto and its query goes through
 * `attention`. Inference only.
 */
export function attentionDecode(q: Tensor, k: Tensor, v: Tensor, caches: readonly DecodeCache[], scale?: number): Tensor {
  return noGrad(() =>
    scope(() => {
      const [, Hq, N, D] = q.shape;
      if (caches.length !== N) throw new RangeError(`attentionDecode: ${N} queries for ${caches.length} caches`);
      const sc = scale ?? 1 / Math.sqrt(D);
      const kern = q.backend.fused?.attentionDecode;
      // One pass over the caches: a decode step calls this once per layer with every sequence.
      let fused = kern !== undefined && rowsF32(q) && rowsF32(k) && rowsF32(v);
      const ks: Input[] = [],
        vs: Input[] = [],
        lengths: number[] = [];
      for (const c of caches) {
        if (c.length >= c.k.shape[2] || c.v.shape[2] !== c.k.shape[2])
          throw new RangeError(`attentionDecode: a cache of ${c.k.shape[2]} positions has no room after ${c.length}`);
        fused &&= rowsF32(c.k) && rowsF32(c.v);
        if (fused) {
          ks.push(heads(c.k));
          vs.push(heads(c.v));
          lengths.push(c.length);
        }
      }
      if (kern && fused) {
        const out = kern(heads(q), heads(k), heads(v), ks, vs, lengths, sc);
        return fromHandle(q.backend, out, [1, N, Hq, D], "f32").permute([0, 2, 1, 3]);
      }
      const ys = caches.map((c, i) => {
        ops.copyInto(c.k.narrow(2, c.length, 1), k.narrow(2, i, 1));
        ops.copyInto(c.v.narrow(2, c.length, 1), v.narrow(2, i, 1));
        return attention(q.narrow(2, i, 1), c.k.narrow(2, 0, c.length + 1), c.v.narrow(2, 0, c.length + 1), { causal: false, scale: sc });
      });
      return ys.length === 1 ? ys[0] : ops.concat(ys, 2);
    }),
  );
}

/** f32 with rows of the last axis contiguous: what FusedKernels.attentionDecode reads. */
function rowsF32(t: Tensor): boolean {
  return t.dtype === "f32" && t.strides[3] === 1;
}

/**
 * The [H, rows, D] view of a [1, H, rows, D] tensor as a plain Input: a decode step passes two caches
 * per sequence, and a Tensor per view would cost more than the kernel's work on a short cache.
 */
function heads(t: Tensor): Input {
  return {
    handle: t.storage.handle,
    dtype: t.dtype,
    view: { shape: [t.shape[1], t.shape[2], t.shape[3]], strides: [t.strides[1], t.strides[2], t.strides[3]], offset: t.offset },
  };
}

// ---------------------------------------------------------------- gradient rules

export const fusedNnGradRules = {
  dropout: {
    backward: (c: GradCtx, g: Tensor) => [dropoutKernel(g, c.params as DropoutParams)],
  },
  swiglu: {
    save: { inputs: [0, 1] },
    backward: (c: GradCtx, g: Tensor) => {
      const [gate, up] = [saved(c, 0), saved(c, 1)];
      const r = pair(gate, "swigluBackward")(inp(gate), inp(up), inp(dense(g)));
      return [fromHandle(gate.backend, r.gGate, gate.shape, gate.dtype), fromHandle(gate.backend, r.gUp, up.shape, up.dtype)];
    },
  },
  rope: {
    backward: (c: GradCtx, g: Tensor) => {
      const [cos, sin] = [saved(c, 1), saved(c, 2)];
      return [fromHandle(g.backend, pair(g, "ropeBackward")(inp(dense(g)), inp(cos), inp(sin), c.params as boolean), g.shape, g.dtype)];
    },
  },
  attention: {
    save: { inputs: [0, 1, 2], out: true },
    backward: (c: GradCtx, g: Tensor) => {
      const [q, k, v, lse] = [saved(c, 0), saved(c, 1), saved(c, 2), saved(c, 3)];
      const { causal, scale } = c.params as { causal: boolean; scale: number };
      const r = pair(q, "attentionBackward")(inp(q), inp(k), inp(v), inp(c.out as Tensor), inp(lse), inp(dense(g)), causal, scale);
      return [fromHandle(q.backend, r.gq, q.shape, q.dtype), fromHandle(q.backend, r.gk, k.shape, k.dtype), fromHandle(q.backend, r.gv, v.shape, v.dtype)];
    },
  },
  loraBranch: loraBranchRule,
  loraLinear: loraLinearRule,
};
registerGradRules(fusedNnGradRules);
