/**
 * Every gradient rule, in one table. A rule maps the output gradient `g` to one gradient per
 * input (null where none). Rules run under noGrad inside a scope, so temporaries are freed.
 * `save` names what the forward must keep alive for backward: nothing else is retained.
 * These are the primitives' rules; the fused kernels (fused.ts, fused-nn.ts), matmul4bit (quant.ts)
 * and recompute (recompute.ts) register their own in the same table (autograd.ts) when they load.
 */
import { type GradCtx, gradRuleTable, registerGradRules } from "./autograd.ts";
import * as ops from "./ops.ts";
import type { Tensor } from "./tensor.ts";

export interface GradRule {
  save?: { inputs?: number[]; out?: boolean };
  backward(ctx: GradCtx, g: Tensor): (Tensor | null)[];
}

const x0 = (c: GradCtx) => c.saved[0] as Tensor;
const x1 = (c: GradCtx) => c.saved[1] as Tensor;
const out = (c: GradCtx) => c.out as Tensor;
const mask = (cond: Tensor, like: Tensor) => ops.cast(cond, like.dtype);

/** The whole table (every registered rule), for tests and tools. */
export const gradRules: Record<string, GradRule> = gradRuleTable();

const primitiveGradRules: Record<string, GradRule> = {
  // ---- views ----
  reshape: { backward: (c, g) => [ops.reshape(g, [...c.inShapes[0]])] },
  permute: {
    backward: (c, g) => {
      const axes = c.params as number[];
      const inv = axes.map((_, i) => axes.indexOf(i));
      return [ops.permute(g, inv)];
    },
  },
  expand: { backward: (c, g) => [ops.sumTo(g, c.inShapes[0])] },
  slice: {
    // Zero-pad g back to the input shape, one axis at a time.
    backward: (c, g) => {
      const starts = c.params as number[];
      const shape = c.inShapes[0];
      let cur = g;
      for (let a = 0; a < shape.length; a++) {
        const before = starts[a];
        const after = shape[a] - before - cur.shape[a];
        if (before === 0 && after === 0) continue;
        const parts: Tensor[] = [];
        const pad = (n: number) => {
          const s = [...cur.shape];
          s[a] = n;
          return ops
            .scalarLike(cur, 0)
            .reshape(s.map(() => 1))
            .expand(s);
        };
        if (before) parts.push(pad(before));
        parts.push(cur);
        if (after) parts.push(pad(after));
        cur = ops.concat(parts, a);
      }
      return [cur];
    },
  },
  copy: { backward: (_c, g) => [g] },
  cast: { backward: (c, g) => [ops.cast(g, c.inDtypes[0])] },

  // ---- unary ----
  neg: { backward: (_c, g) => [g.neg()] },
  exp: { save: { out: true }, backward: (c, g) => [g.mul(out(c))] },
  log: { save: { inputs: [0] }, backward: (c, g) => [g.div(x0(c))] },
  sqrt: { save: { out: true }, backward: (c, g) => [g.div(out(c).mul(2))] },
  recip: { save: { out: true }, backward: (c, g) => [g.mul(out(c).square()).neg()] },
  sin: { save: { inputs: [0] }, backward: (c, g) => [g.mul(x0(c).cos())] },
  cos: { save: { inputs: [0] }, backward: (c, g) => [g.mul(x0(c).sin()).neg()] },
  tanh: { save: { out: true }, backward: (c, g) => [g.mul(ops.binary("sub", 1, out(c).square()))] },
  sigmoid: { save: { out: true }, backward: (c, g) => [g.mul(out(c)).mul(ops.binary("sub", 1, out(c)))] },
  abs: {
    save: { inputs: [0] },
    backward: (c, g) => [g.mul(mask(ops.gt(x0(c), 0), g).sub(mask(x0(c).lt(0), g)))],
  },
  relu: { save: { inputs: [0] }, backward: (c, g) => [g.mul(mask(ops.gt(x0(c), 0), g))] },

  // ---- binary (inputs arrive already broadcast; expand's rule sums back) ----
  add: { backward: (_c, g) => [g, g] },
  sub: { backward: (c, g) => [g, c.needs[1] ? g.neg() : null] },
  mul: {
    save: { inputs: [0, 1] },
    backward: (c, g) => [c.needs[0] ? g.mul(x1(c)) : null, c.needs[1] ? g.mul(x0(c)) : null],
  },
  div: {
    save: { inputs: [0, 1] },
    backward: (c, g) => [c.needs[0] ? g.div(x1(c)) : null, c.needs[1] ? g.mul(x0(c)).div(x1(c).square()).neg() : null],
  },
  pow: {
    save: { inputs: [0, 1], out: true },
    backward: (c, g) => [c.needs[0] ? g.mul(x1(c)).mul(x0(c).pow(x1(c).sub(1))) : null, c.needs[1] ? g.mul(out(c)).mul(x0(c).log()) : null],
  },
  // Ties split the gradient evenly, like torch.maximum.
  max: {
    save: { inputs: [0, 1] },
    backward: (c, g) => {
      const ma = mask(x1(c).lt(x0(c)), g).add(mask(x0(c).eq(x1(c)), g).mul(0.5));
      return [g.mul(ma), g.mul(ops.binary("sub", 1, ma))];
    },
  },
  min: {
    save: { inputs: [0, 1] },
    backward: (c, g) => {
      const ma = mask(x0(c).lt(x1(c)), g).add(mask(x0(c).eq(x1(c)), g).mul(0.5));
      return [g.mul(ma), g.mul(ops.binary("sub", 1, ma))];
    },
  },
  where: {
    save: { inputs: [0] },
    backward: (c, g) => [null, c.needs[1] ? ops.where(x0(c), g, 0) : null, c.needs[2] ? ops.where(x0(c), 0, g) : null],
  },

  // ---- reductions: the reduced dims are the last `params` dims of the (permuted) input ----
  reduce_sum: {
    backward: (c, g) => {
      const ones = new Array(c.params as number).fill(1);
      return [
        g
          .reshape([...g.shape, ...ones])
          .expand([...c.inShapes[0]])
          .contiguous(),
      ];
    },
  },
  // The gradient goes to every position equal to the max, split evenly among ties.
  reduce_max: {
    save: { inputs: [0], out: true },
    backward: (c, g) => {
      const x = x0(c);
      const n = c.params as number;
      const ones = new Array(n).fill(1);
      const hit = mask(x.eq(out(c).reshape([...out(c).shape, ...ones])), x);
      const count = hit.sum(x.shape.map((_, i) => i).slice(x.rank - n), true);
      return [hit.div(count).mul(g.reshape([...g.shape, ...ones]))];
    },
  },

  // ---- matmul, indexing, concat ----
  matmul: {
    save: { inputs: [0, 1] },
    backward: (c, g) => [c.needs[0] ? g.matmul(x1(c).T) : null, c.needs[1] ? x0(c).T.matmul(g) : null],
  },
  gather: {
    save: { inputs: [1] },
    backward: (c, g) => [ops.scatterAdd(c.inShapes[0], x1(c), g, c.params as number), null],
  },
  scatterAdd: {
    save: { inputs: [0] },
    backward: (c, g) => [null, ops.gather(g, x0(c), c.params as number)],
  },
  concat: {
    backward: (c, g) => {
      const axis = c.params as number;
      let start = 0;
      return c.inShapes.map((s, i) => {
        const part = c.needs[i] ? ops.narrow(g, axis, start, s[axis]) : null;
        start += s[axis];
        return part;
      });
    },
  },
};
registerGradRules(primitiveGradRules);
