/** Gradient conformance: every differentiable op against finite differences, plus a coverage check. */
import type { Backend, UnaryOp } from "../backend.ts";
import * as F from "../functional.ts";
import { gradRules } from "../grad.ts";
import * as ops from "../ops.ts";
import { recompute } from "../recompute.ts";
import { type Tensor, tensor } from "../tensor.ts";
import { type GradcheckOptions, coveredOps, gradcheck } from "./gradcheck.ts";
import { type SuiteOptions, rnd, spread, withoutFused } from "./util.ts";
import { quantGradCases } from "./quant.ts";

type In = { data: Float32Array | Int32Array | Uint8Array; shape: number[]; dtype?: "f32" | "i32" | "u8" };
const f = (data: Float32Array, shape: number[]): In => ({ data, shape });
/** A constant f32 tensor on x's backend (a frozen base weight: no gradient, so not a gradcheck input). */
const frozen = (x: Tensor, data: Float32Array, shape: number[]): Tensor => tensor(data, { shape, backend: x.backend });
const i32 = (data: number[], shape: number[]): In => ({ data: Int32Array.from(data), shape, dtype: "i32" });
const u8 = (data: number[], shape: number[]): In => ({ data: Uint8Array.from(data), shape, dtype: "u8" });

interface Case {
  name: string;
  fn: (...xs: Tensor[]) => Tensor;
  inputs: In[];
  opts?: GradcheckOptions;
  /** Only on backends whose dtypes include this. */
  needs?: "f16";
}

function cases(be: Backend): Case[] {
  const unaryDomain: Record<UnaryOp, Float32Array> = {
    neg: rnd(6, 1),
    exp: rnd(6, 2),
    log: rnd(6, 3, 0.5, 2),
    sqrt: rnd(6, 4, 0.5, 2),
    recip: rnd(6, 5, 0.5, 2),
    sin: rnd(6, 6, -2, 2),
    cos: rnd(6, 7, -2, 2),
    tanh: rnd(6, 8),
    sigmoid: rnd(6, 9, -3, 3),
    abs: spread(6, 10, 0.1),
    relu: spread(6, 11, 0.1),
  };
  const tables = F.ropeTables(4, 8, 10000, undefined, { backend: be });
  return [
    ...(Object.keys(unaryDomain) as UnaryOp[]).map((op) => ({
      name: `unary ${op}`,
      fn: (x: Tensor) => ops.unary(op, x),
      inputs: [f(unaryDomain[op], [2, 3])],
    })),
    { name: "add (broadcast)", fn: (a, b) => a.add(b), inputs: [f(rnd(6, 12), [2, 3]), f(rnd(3, 13), [3])] },
    { name: "sub (broadcast)", fn: (a, b) => a.sub(b), inputs: [f(rnd(6, 14), [2, 3]), f(rnd(2, 15), [2, 1])] },
    { name: "mul (broadcast)", fn: (a, b) => a.mul(b), inputs: [f(rnd(6, 16), [2, 3]), f(rnd(3, 17), [1, 3])] },
    { name: "div", fn: (a, b) => a.div(b), inputs: [f(rnd(6, 18), [2, 3]), f(rnd(6, 19, 0.5, 2), [2, 3])] },
    { name: "pow", fn: (a, b) => a.pow(b), inputs: [f(rnd(6, 20, 0.5, 2), [2, 3]), f(rnd(6, 21, -1, 2), [2, 3])] },
    {
      name: "maximum",
      fn: (a, b) => a.maximum(b),
      inputs: [
        f(spread(6, 22), [2, 3]),
        f(
          spread(6, 23).map((v) => v + 0.025),
          [2, 3],
        ),
      ],
    },
    {
      name: "minimum",
      fn: (a, b) => a.minimum(b),
      inputs: [
        f(spread(6, 24), [2, 3]),
        f(
          spread(6, 25).map((v) => v + 0.025),
          [2, 3],
        ),
      ],
    },
    { name: "where", fn: (c, a, b) => ops.where(c, a, b), inputs: [u8([1, 0, 0, 1, 1, 0], [2, 3]), f(rnd(6, 26), [2, 3]), f(rnd(3, 27), [3])] },
    { name: "sum over axes (permute + reduce)", fn: (x) => x.sum([0, 2]), inputs: [f(rnd(24, 28), [2, 3, 4])] },
    { name: "sum keepdim", fn: (x) => x.sum(-1, true), inputs: [f(rnd(12, 29), [3, 4])] },
    { name: "mean", fn: (x) => x.mean(1), inputs: [f(rnd(12, 30), [3, 4])] },
    { name: "max over axis", fn: (x) => x.max(1), inputs: [f(spread(12, 31), [3, 4])] },
    { name: "matmul", fn: (a, b) => a.matmul(b), inputs: [f(rnd(12, 32), [3, 4]), f(rnd(8, 33), [4, 2])] },
    { name: "matmul transposed views", fn: (a, b) => a.T.matmul(b.T), inputs: [f(rnd(12, 34), [4, 3]), f(rnd(8, 35), [2, 4])] },
    { name: "matmul broadcast batch", fn: (a, b) => a.matmul(b), inputs: [f(rnd(24, 36), [2, 3, 4]), f(rnd(8, 37), [4, 2])] },
    { name: "gather", fn: (x, idx) => ops.gather(x, idx, 1), inputs: [f(rnd(6, 38), [2, 3]), i32([2, 0, 2, 1], [2, 2])] },
    { name: "scatterAdd", fn: (idx, src) => ops.scatterAdd([2, 3], idx, src, 1), inputs: [i32([2, 0, 2, 1], [2, 2]), f(rnd(4, 39), [2, 2])] },
    { name: "embedding (repeated ids)", fn: (t, ids) => ops.embedding(t, ids), inputs: [f(rnd(8, 40), [4, 2]), i32([3, 1, 3], [3])] },
    { name: "concat", fn: (a, b) => ops.concat([a, b], 1), inputs: [f(rnd(4, 41), [2, 2]), f(rnd(6, 42), [2, 3])] },
    {
      name: "slice + reshape + permute + expand + contiguous",
      fn: (x) => x.narrow(1, 1, 2).permute(1, 0).reshape([4]).reshape([1, 4]).expand([3, 4]).contiguous(),
      inputs: [f(rnd(8, 43), [2, 4])],
    },
    {
      name: "slice 2-D window",
      fn: (x) =>
        x.slice([
          [1, 3],
          [0, 2],
        ]),
      inputs: [f(rnd(12, 44), [3, 4])],
    },
    {
      name: "cast f32 -> f16 -> f32",
      fn: (x) => x.cast("f16").mul(x.cast("f16")).cast("f32"),
      inputs: [f(rnd(4, 45, 0.5, 1), [4])],
      opts: { eps: 0.05, atol: 0.02, rtol: 0.02 },
      needs: "f16",
    },
    { name: "softmax", fn: (x) => F.softmax(x, -1), inputs: [f(rnd(12, 46, -2, 2), [3, 4])] },
    { name: "softmax over a middle axis", fn: (x) => F.softmax(x, 0), inputs: [f(rnd(12, 47, -2, 2), [3, 4])] },
    { name: "logSoftmax", fn: (x) => F.logSoftmax(x, -1), inputs: [f(rnd(12, 48, -2, 2), [3, 4])] },
    { name: "rmsNorm", fn: (x, w) => F.rmsNorm(x, w, 1e-5), inputs: [f(rnd(12, 49), [3, 4]), f(rnd(4, 50, 0.5, 1.5), [4])] },
    {
      name: "addRmsNorm (both outputs used)",
      fn: (x, r, w) => {
        const [h, y] = F.addRmsNorm(x, r, w, 1e-5);
        return h.mul(y);
      },
      inputs: [f(rnd(12, 88), [3, 4]), f(rnd(12, 89), [3, 4]), f(rnd(4, 90, 0.5, 1.5), [4])],
    },
    { name: "crossEntropy (mean, ignore index)", fn: (x, t) => F.crossEntropy(x, t), inputs: [f(rnd(15, 51, -2, 2), [3, 5]), i32([4, -100, 0], [3])] },
    {
      name: "linearCrossEntropy chunked (bias, ignore index)",
      fn: (h, w, b, t) => F.linearCrossEntropy(h, w, t, { bias: b, chunkRows: 2 }),
      inputs: [f(rnd(15, 83), [5, 3]), f(rnd(21, 84), [7, 3]), f(rnd(7, 85), [7]), i32([6, -100, 0, 3, 3], [5])],
    },
    {
      name: "linearCrossEntropy chunked (sum, no bias)",
      fn: (h, w, t) => F.linearCrossEntropy(h, w, t, { chunkRows: 3, reduction: "sum" }),
      inputs: [f(rnd(12, 86), [4, 3]), f(rnd(18, 87), [6, 3]), i32([1, 5, 0, 2], [4])],
    },
    { name: "silu", fn: (x) => F.silu(x), inputs: [f(rnd(6, 52, -3, 3), [6])] },
    { name: "gelu exact (erf)", fn: (x) => F.gelu(x), inputs: [f(spread(6, 53, 0.3), [6])] },
    { name: "gelu tanh", fn: (x) => F.gelu(x, "tanh"), inputs: [f(rnd(6, 54, -3, 3), [6])] },
    { name: "layerNorm", fn: (x, w, b) => F.layerNorm(x, w, b), inputs: [f(rnd(8, 55), [2, 4]), f(rnd(4, 56), [4]), f(rnd(4, 57), [4])] },
    { name: "rope rotate_half", fn: (x) => F.rope(x, tables, 1, "rotate_half"), inputs: [f(rnd(12, 58), [3, 4])] },
    { name: "rope interleaved", fn: (x) => F.rope(x, tables, 2, "interleaved"), inputs: [f(rnd(12, 59), [3, 4])] },
    {
      name: "attention (causal, GQA)",
      fn: (q, k, v) => F.attention(q, k, v),
      inputs: [f(rnd(16, 60), [1, 2, 2, 4]), f(rnd(12, 61), [1, 1, 3, 4]), f(rnd(12, 62), [1, 1, 3, 4])],
    },
    { name: "dropout (fixed seed)", fn: (x) => F.dropout(x, 0.3, 5), inputs: [f(rnd(8, 63), [8])] },
    { name: "swiglu", fn: (g, u) => F.swiglu(g, u), inputs: [f(rnd(6, 68, -3, 3), [2, 3]), f(rnd(6, 69), [2, 3])] },
    { name: "rope on a head-permuted view", fn: (x) => F.rope(x.reshape([1, 3, 2, 4]).permute(0, 2, 1, 3), tables, 1), inputs: [f(rnd(24, 72), [3, 8])] },
    {
      name: "rope interleaved on a head-permuted view",
      fn: (x) => F.rope(x.reshape([1, 3, 2, 4]).permute(0, 2, 1, 3), tables, 0, "interleaved"),
      inputs: [f(rnd(24, 73), [3, 8])],
    },
    {
      name: "attention (non-causal, S > T)",
      fn: (q, k, v) => F.attention(q, k, v, { causal: false }),
      inputs: [f(rnd(16, 74), [1, 2, 2, 4]), f(rnd(24, 75), [1, 2, 3, 4]), f(rnd(24, 76), [1, 2, 3, 4])],
    },
    {
      name: "loraBranch (dropout)",
      fn: (x, a, b) => F.loraBranch(x, a, b, 1.5, { p: 0.3, seed: 9, offset: 2 }),
      inputs: [f(rnd(12, 77), [3, 4]), f(rnd(8, 78), [2, 4]), f(rnd(10, 79), [5, 2])],
    },
    {
      name: "loraLinear (dropout, bias, frozen base)",
      fn: (x, a, b) => F.loraLinear(x, frozen(x, rnd(20, 90), [5, 4]), frozen(x, rnd(5, 91), [5]), a, b, 1.5, { p: 0.3, seed: 9, offset: 2 }),
      inputs: [f(rnd(12, 92), [3, 4]), f(rnd(8, 93), [2, 4]), f(rnd(10, 94), [5, 2])],
    },
    {
      name: "loraLinear (no dropout, odd shapes)",
      fn: (x, a, b) => F.loraLinear(x, frozen(x, rnd(21, 95), [7, 3]), null, a, b, 0.5, null),
      inputs: [f(rnd(15, 96), [5, 3]), f(rnd(9, 97), [3, 3]), f(rnd(21, 98), [7, 3])],
    },
    {
      name: "loraBranch (no dropout)",
      fn: (x, a, b) => F.loraBranch(x, a, b, 0.5, null),
      inputs: [f(rnd(12, 80), [3, 4]), f(rnd(8, 81), [2, 4]), f(rnd(10, 82), [5, 2])],
    },
    {
      name: "recompute (a block recomputed in backward, with an inner parameter-free graph)",
      fn: (x, w) => recompute((a: Tensor, b: Tensor) => F.silu(a.matmul(b)).mul(a.sum(-1, true)), x, w),
      inputs: [f(rnd(6, 66), [2, 3]), f(rnd(6, 67), [3, 2])],
    },
    { name: "stack", fn: (a, b) => ops.stack([a, b], 1), inputs: [f(rnd(3, 64), [3]), f(rnd(3, 65), [3])] },
    ...quantGradCases(be),
  ];
}

export function gradientSuite(opts: SuiteOptions): void {
  const { backend, test } = opts;
  const variants: [string, Backend][] = backend.fused
    ? [
        ["", backend],
        [" (composite path)", withoutFused(backend)],
      ]
    : [["", backend]];
  for (const [label, be] of variants) {
    for (const c of cases(be)) {
      if (c.needs && !be.dtypes.includes(c.needs)) continue;
      if (label && !/softmax|rmsNorm|addRmsNorm|crossEntropy|linearCrossEntropy|attention|matmul4bit|dropout|swiglu|rope|loraBranch|loraLinear/.test(c.name))
        continue;
      test(`gradcheck ${c.name}${label}`, async () => {
        const r = await gradcheck(be, c.fn, c.inputs, c.opts);
        if (!r.ok) throw new Error(`gradcheck ${c.name}${label} failed: max error ${r.maxAbsErr} at ${r.worst}`);
      });
    }
  }

  test("gradcheck detects a wrong gradient rule", async () => {
    const rule = gradRules.mul;
    gradRules.mul = { ...rule, backward: (c, g) => rule.backward(c, g).map((t) => t?.mul(1.1) ?? null) };
    try {
      const r = await gradcheck(backend, (a, b) => a.mul(b), [f(rnd(4, 70), [4]), f(rnd(4, 71), [4])]);
      if (r.ok) throw new Error("a mul rule off by 10% passed gradcheck");
    } finally {
      gradRules.mul = rule;
    }
  });

  test("every gradient rule in the table was exercised by a gradcheck", () => {
    const fusedNames = ["softmax", "logSoftmax", "rmsNorm", "crossEntropy", "linearCrossEntropy", "dropout", "swiglu", "rope", "attention", "loraLinear"];
    // A fused op's rule runs only where the backend has that kernel.
    const kernelOf: Record<string, string> = { linearCrossEntropy: "crossEntropy" };
    const has = (op: string) => !fusedNames.includes(op) || !!backend.fused?.[(kernelOf[op] ?? op) as keyof typeof backend.fused];
    const missing = Object.keys(gradRules).filter((op) => !coveredOps.has(op) && has(op));
    if (missing.length) throw new Error(`gradient rules never checked: ${missing.join(", ")}`);
  });
}
