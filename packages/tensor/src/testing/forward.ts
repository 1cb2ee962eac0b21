/** Forward conformance: every primitive and composite against plain-JS reference numbers. */
import type { BinaryOp, UnaryOp } from "../backend.ts";
import { f16BitsToF32, f32ToF16Bits, f32ToBf16Bits, bf16BitsToF32 } from "../dtype.ts";
import * as F from "../functional.ts";
import * as ops from "../ops.ts";
import { uniformAt } from "../random.ts";
import { scope } from "../scope.ts";
import { arange, full, rand, tensor } from "../tensor.ts";
import * as O from "./oracle.ts";
import { type SuiteOptions, expectClose, mk, rnd, withoutFused } from "./util.ts";

const unaryRef: Record<UnaryOp, (v: number) => number> = {
  neg: (v) => -v,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  recip: (v) => 1 / v,
  sin: Math.sin,
  cos: Math.cos,
  tanh: Math.tanh,
  sigmoid: (v) => 1 / (1 + Math.exp(-v)),
  abs: Math.abs,
  relu: (v) => Math.max(v, 0),
};
const binaryRef: Record<Exclude<BinaryOp, "lt" | "eq">, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: Math.max,
  min: Math.min,
  pow: Math.pow,
};

export function forwardSuite(opts: SuiteOptions): void {
  const { backend, test } = opts;
  const tol = opts.tolScale ?? 1;
  const T = mk(backend);
  const run = test;

  run("creation: full, arange, rand (bitwise equal to the counter-based stream)", async () => {
    await expectClose(full([2, 3], 1.5, { backend }), new Array(6).fill(1.5), "full");
    await expectClose(arange(5, { backend }), [0, 1, 2, 3, 4], "arange i32", 0, 0);
    await expectClose(arange(4, { backend, dtype: "f32", start: 1, step: 0.5 }), [1, 1.5, 2, 2.5], "arange f32");
    const r = rand([3, 5], 42, 7, { backend });
    await expectClose(
      r,
      Array.from({ length: 15 }, (_, i) => uniformAt(42, 7 + i)),
      "rand",
      0,
      0,
    );
  });

  run("unary ops vs Math", async () => {
    const data = rnd(24, 1, 0.1, 2.5);
    for (const op of Object.keys(unaryRef) as UnaryOp[]) {
      const x = T(data, [4, 6]);
      const d = op === "log" || op === "sqrt" || op === "recip" ? data : rnd(24, 2, -2, 2);
      const y = ops.unary(op, T(d, [4, 6]));
      await expectClose(y, Array.from(d, unaryRef[op]), `unary ${op}`, 1e-6 * tol, 1e-5 * tol);
      x.dispose();
    }
  });

  run("binary ops with broadcasting", async () => {
    const shapes: [number[], number[]][] = [
      [
        [2, 3, 4],
        [3, 1],
      ],
      [[4], [2, 1, 1]],
      [
        [1, 5],
        [3, 1],
      ],
      [[3], []],
    ];
    for (const [sa, sb] of shapes) {
      const na = sa.reduce((a, b) => a * b, 1);
      const nb = sb.reduce((a, b) => a * b, 1);
      const a = rnd(na, 3, 0.5, 2);
      const b = rnd(nb, 4, 0.5, 2);
      for (const op of Object.keys(binaryRef) as (keyof typeof binaryRef)[]) {
        const y = ops.binary(op, T(a, sa), T(b, sb));
        await expectClose(y, O.elementwise([O.host(a, sa), O.host(b, sb)], binaryRef[op]), `${op} [${sa}]x[${sb}]`, 1e-6 * tol, 1e-5 * tol);
      }
      const lt = T(a, sa).lt(T(b, sb));
      if (lt.dtype !== "u8") throw new Error(`lt gives ${lt.dtype}, expected u8`);
      await expectClose(
        lt,
        O.elementwise([O.host(a, sa), O.host(b, sb)], (p, q) => (p < q ? 1 : 0)),
        "lt",
        0,
        0,
      );
    }
    await expectClose(T([1, 2, 3], [3]).eq(T([1, 0, 3], [3])), [1, 0, 1], "eq", 0, 0);
  });

  run("where, NaN and infinity propagation", async () => {
    const c = T([1, 0, 1, 0], [2, 2], "u8");
    await expectClose(ops.where(c, T([1, 2, 3, 4], [2, 2]), T([9], [1])), [1, 9, 3, 9], "where");
    await expectClose(T([NaN, 1, 2], [3]).maximum(T([0, NaN, 1], [3])), [NaN, NaN, 2], "max NaN");
    await expectClose(T([1, Infinity, 3], [3]).sum(), [Infinity], "sum inf");
    await expectClose(T([NaN, 1], [2]).max(), [NaN], "reduce max NaN");
    await expectClose(T([1, -1, 0], [3]).div(0), [Infinity, -Infinity, NaN], "div by zero");
  });

  run("reductions over axes, keepdim", async () => {
    const d = rnd(60, 5);
    const cases: [number[], boolean][] = [
      [[0], false],
      [[1, 2], true],
      [[2], false],
      [[0, 1, 2], false],
      [[1], true],
    ];
    for (const [axes, keep] of cases) {
      await expectClose(T(d, [3, 4, 5]).sum(axes, keep), O.reduce(O.host(d, [3, 4, 5]), axes, "sum", keep), `sum ${axes}`, 1e-5 * tol);
      await expectClose(T(d, [3, 4, 5]).max(axes, keep), O.reduce(O.host(d, [3, 4, 5]), axes, "max", keep), `max ${axes}`, 0, 0);
      await expectClose(T(d, [3, 4, 5]).mean(axes, keep), O.reduce(O.host(d, [3, 4, 5]), axes, "mean", keep), `mean ${axes}`, 1e-6 * tol);
    }
  });

  run("matmul: 2-D, transposed views, batched, broadcast batch, vectors", async () => {
    const a = rnd(5 * 7, 6);
    const b = rnd(7 * 3, 7);
    const ref = O.matmul(O.host(a, [5, 7]), O.host(b, [7, 3]));
    await expectClose(T(a, [5, 7]).matmul(T(b, [7, 3])), ref, "matmul", 1e-5 * tol, 1e-5 * tol);
    const at = O.transposeLast(O.host(a, [5, 7]));
    const bt = O.transposeLast(O.host(b, [7, 3]));
    await expectClose(T(at.data, [7, 5]).T.matmul(T(bt.data, [3, 7]).T), ref, "matmul transA transB", 1e-5 * tol, 1e-5 * tol);
    const ba = rnd(2 * 3 * 4 * 6, 8);
    const bb = rnd(6 * 5, 9);
    const bbRep = O.host([...bb, ...bb, ...bb, ...bb, ...bb, ...bb], [2, 3, 6, 5]);
    await expectClose(T(ba, [2, 3, 4, 6]).matmul(T(bb, [6, 5])), O.matmul(O.host(ba, [2, 3, 4, 6]), bbRep), "broadcast batch", 1e-5 * tol, 1e-5 * tol);
    await expectClose(T([1, 2, 3], [3]).matmul(T([4, 5, 6], [3])), [32], "vector dot");
    const odd = rnd(33 * 65, 10);
    const odd2 = rnd(65 * 17, 11);
    await expectClose(T(odd, [33, 65]).matmul(T(odd2, [65, 17])), O.matmul(O.host(odd, [33, 65]), O.host(odd2, [65, 17])), "odd sizes", 1e-4 * tol, 1e-4 * tol);
  });

  run("views: permute, slice, expand, reshape of non-contiguous, contiguous copies", async () => {
    const d = Array.from({ length: 24 }, (_, i) => i);
    const x = T(d, [2, 3, 4]);
    const p = x.permute(2, 0, 1);
    const ref: number[] = [];
    for (let k = 0; k < 4; k++) for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) ref.push(i * 12 + j * 4 + k);
    await expectClose(p.contiguous(), ref, "permute");
    await expectClose(p.reshape([4, 6]), ref, "reshape of permuted");
    await expectClose(
      x.slice([
        [1, 2],
        [1, 3],
        [0, 4],
      ]),
      [16, 17, 18, 19, 20, 21, 22, 23],
      "slice",
    );
    await expectClose(x.narrow(2, 1, 2).add(1), [2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23], "op on sliced view");
    await expectClose(
      T([1, 2], [2, 1])
        .expand([2, 3])
        .mul(T([1, 10, 100], [3])),
      [1, 10, 100, 2, 20, 200],
      "expand",
    );
    // element (j, i) of the permuted [3, 2, 4] view sums i*12 + j*4 + k over k
    await expectClose(x.permute(1, 0, 2).sum(-1), [6, 54, 22, 70, 38, 86], "reduce of permuted");
  });

  run("gather, scatterAdd, embedding, concat, stack", async () => {
    const x = T([1, 2, 3, 4, 5, 6], [2, 3]);
    const idx = T([2, 0, 1, 1], [2, 2], "i32");
    await expectClose(ops.gather(x, idx, 1), [3, 1, 5, 5], "gather axis 1");
    await expectClose(ops.scatterAdd([2, 3], idx, T([1, 2, 3, 4], [2, 2]), 1), [2, 0, 1, 0, 7, 0], "scatterAdd");
    const table = T(rnd(12, 12), [4, 3]);
    const rows = await table.read();
    const ids = T([3, 0, 3], [3], "i32");
    await expectClose(ops.embedding(table, ids), [...rows.slice(9, 12), ...rows.slice(0, 3), ...rows.slice(9, 12)], "embedding", 0, 0);
    await expectClose(ops.concat([T([1, 2], [2, 1]), T([3, 4, 5, 6], [2, 2])], 1), [1, 3, 4, 2, 5, 6], "concat axis 1");
    await expectClose(ops.stack([T([1, 2], [2]), T([3, 4], [2])], 0), [1, 2, 3, 4], "stack");
    let threw = false;
    try {
      await ops.gather(x, T([3], [1, 1], "i32"), 1).read();
    } catch {
      threw = true;
    }
    if (!threw && backend.readSync) throw new Error("gather with an out-of-range index must throw on synchronous backends");
  });

  run("dtypes: casts, f16/bf16 rounding, overflow, integer semantics", async () => {
    const third = 1 / 3;
    if (backend.dtypes.includes("f16")) {
      await expectClose(T([third, 65504 * 2, 1e-8, -2.5], [4]).cast("f16"), [f16BitsToF32(f32ToF16Bits(third)), Infinity, 0, -2.5], "f32->f16", 0, 0);
      await expectClose(T([1, 2048], [2], "f16").add(T([0.5, 1], [2], "f16")), [1.5, 2048], "f16 add rounds to even", 0, 0);
      await expectClose(T([60000], [1], "f16").mul(2), [Infinity], "f16 overflow is inf, not garbage", 0, 0);
    }
    if (backend.dtypes.includes("bf16")) {
      await expectClose(T([third, 3e38], [2]).cast("bf16"), [bf16BitsToF32(f32ToBf16Bits(third)), bf16BitsToF32(f32ToBf16Bits(3e38))], "f32->bf16", 0, 0);
    }
    await expectClose(T([-2.7, 2.7, 7], [3]).cast("i32"), [-2, 2, 7], "f32->i32 truncates", 0, 0);
    await expectClose(T([5, -3], [2], "i32").add(T([2, 2], [2], "i32")), [7, -1], "i32 add", 0, 0);
    await expectClose(T([7, -7], [2], "i32").div(T([2, 2], [2], "i32")), [3, -3], "i32 div truncates", 0, 0);
    await expectClose(T([3, 200], [2], "u8").cast("f32"), [3, 200], "u8->f32", 0, 0);
  });

  for (const [label, be] of [
    ["fused", backend],
    ["composite", withoutFused(backend)],
  ] as const) {
    const M = mk(be);
    run(`softmax, logSoftmax, rmsNorm, crossEntropy (${label})`, async () => {
      const d = rnd(4 * 9, 13, -3, 3);
      await expectClose(F.softmax(M(d, [4, 9])), O.softmaxRows(O.host(d, [4, 9])), "softmax", 1e-6 * tol, 1e-5 * tol);
      await expectClose(F.logSoftmax(M(d, [4, 9])), O.softmaxRows(O.host(d, [4, 9]), true), "logSoftmax", 1e-5 * tol, 1e-5 * tol);
      const w = Array.from(rnd(9, 14, 0.5, 1.5));
      await expectClose(F.rmsNorm(M(d, [2, 2, 9]), M(w, [9]), 1e-5), O.rmsNormRows(O.host(d, [2, 2, 9]), w, 1e-5), "rmsNorm", 1e-5 * tol, 1e-5 * tol);
      const targets = [3, -100, 8, 0];
      const lsm = O.softmaxRows(O.host(d, [4, 9]), true).data;
      const rows = targets.map((t, r) => (t === -100 ? 0 : -lsm[r * 9 + t]));
      await expectClose(F.crossEntropy(M(d, [4, 9]), M(targets, [4], "i32"), { reduction: "none" }), rows, "crossEntropy none", 1e-5 * tol, 1e-5 * tol);
      await expectClose(
        F.crossEntropy(M(d, [4, 9]), M(targets, [4], "i32")),
        [(rows[0] + rows[2] + rows[3]) / 3],
        "crossEntropy mean skips ignored",
        1e-5 * tol,
        1e-5 * tol,
      );
      await expectClose(
        F.crossEntropy(M(d, [2, 2, 9]), M(targets, [2, 2], "i32"), { reduction: "sum" }),
        [rows[0] + rows[2] + rows[3]],
        "crossEntropy sum 3-D",
        1e-5 * tol,
        1e-5 * tol,
      );
    });
  }

  run("attention: causal, grouped-query heads, KV-cache offset", async () => {
    const [B, H, Hkv, T0, S, D] = [2, 4, 2, 3, 5, 4];
    const q = rnd(B * H * T0 * D, 15);
    const k = rnd(B * Hkv * S * D, 16);
    const v = rnd(B * Hkv * S * D, 17);
    const args = [O.host(q, [B, H, T0, D]), O.host(k, [B, Hkv, S, D]), O.host(v, [B, Hkv, S, D])] as const;
    const y = F.attention(T(q, [B, H, T0, D]), T(k, [B, Hkv, S, D]), T(v, [B, Hkv, S, D]));
    await expectClose(y, O.attention(...args, true), "causal GQA attention", 1e-5 * tol, 1e-4 * tol);
    const y2 = F.attention(T(q, [B, H, T0, D]), T(k, [B, Hkv, S, D]), T(v, [B, Hkv, S, D]), { causal: false });
    await expectClose(y2, O.attention(...args, false), "non-causal attention", 1e-5 * tol, 1e-4 * tol);
  });

  run("RoPE: rotate-half and interleaved, with a position offset", async () => {
    const [Tn, D, off] = [3, 8, 2];
    const x = rnd(Tn * D, 18);
    const tables = F.ropeTables(D, 16, 10000, undefined, { backend });
    const ref = (interleaved: boolean) => {
      const out = new Array(Tn * D);
      for (let t = 0; t < Tn; t++)
        for (let i = 0; i < D / 2; i++) {
          const a = (t + off) / 10000 ** ((2 * i) / D);
          const [p, q] = interleaved ? [t * D + 2 * i, t * D + 2 * i + 1] : [t * D + i, t * D + i + D / 2];
          out[p] = x[p] * Math.cos(a) - x[q] * Math.sin(a);
          out[q] = x[q] * Math.cos(a) + x[p] * Math.sin(a);
        }
      return out;
    };
    await expectClose(F.rope(T(x, [1, Tn, D]), tables, off, "rotate_half"), ref(false), "rope rotate_half", 1e-5 * tol, 1e-5 * tol);
    await expectClose(F.rope(T(x, [1, Tn, D]), tables, off, "interleaved"), ref(true), "rope interleaved", 1e-5 * tol, 1e-5 * tol);
  });

  run("silu, gelu, layerNorm, dropout", async () => {
    const d = rnd(16, 19, -3, 3);
    await expectClose(
      F.silu(T(d, [16])),
      Array.from(d, (v) => v / (1 + Math.exp(-v))),
      "silu",
      1e-6 * tol,
      1e-5 * tol,
    );
    const erfRef = (v: number) => {
      // high-precision series/continued fraction via the complementary error function's Taylor series
      let s = 0,
        term = v,
        n = 0;
      while (Math.abs(term) > 1e-17 && n < 200) {
        s += term / (2 * n + 1);
        n++;
        term *= (-v * v) / n;
      }
      return (2 / Math.sqrt(Math.PI)) * s;
    };
    await expectClose(
      F.gelu(T(d, [16])),
      Array.from(d, (v) => 0.5 * v * (1 + erfRef(v / Math.SQRT2))),
      "gelu exact",
      1e-6 * tol,
      1e-5 * tol,
    );
    await expectClose(
      F.gelu(T(d, [16]), "tanh"),
      Array.from(d, (v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)))),
      "gelu tanh",
      1e-6 * tol,
      1e-5 * tol,
    );
    const ln = F.layerNorm(T(d, [2, 8]), T(new Array(8).fill(2), [8]), T(new Array(8).fill(1), [8]));
    const lnRef: number[] = [];
    for (let r = 0; r < 2; r++) {
      const row = Array.from(d.slice(r * 8, r * 8 + 8));
      const mu = row.reduce((a, b) => a + b) / 8;
      const vr = row.reduce((a, b) => a + (b - mu) ** 2, 0) / 8;
      for (const v of row) lnRef.push(((v - mu) / Math.sqrt(vr + 1e-5)) * 2 + 1);
    }
    await expectClose(ln, lnRef, "layerNorm", 1e-5 * tol, 1e-5 * tol);
    const ones = T(new Array(4000).fill(1), [4000]);
    const a = await F.dropout(ones, 0.25, 99).read();
    const b = await F.dropout(ones, 0.25, 99).read();
    const kept = a.filter((v) => v !== 0);
    if (a.some((v, i) => v !== b[i])) throw new Error("dropout: same seed gave different masks");
    if (kept.some((v) => Math.abs(v - 1 / 0.75) > 1e-6)) throw new Error("dropout: kept values not scaled by 1/(1-p)");
    if (Math.abs(kept.length / 4000 - 0.75) > 0.03) throw new Error(`dropout: kept fraction ${kept.length / 4000}, expected ~0.75`);
    for (let i = 0; i < 4000; i++)
      if ((a[i] !== 0) !== uniformAt(99, i) >= 0.25) throw new Error(`dropout: element ${i} does not follow the counter-based mask`);
  });

  test("memory: dispose and scopes return live bytes to the baseline", () => {
    const before = backend.memory().liveBytes;
    const x = T(rnd(1000, 20), [1000]);
    const kept = scope(() => x.exp().add(1).mul(x).sum());
    x.dispose();
    if (backend.memory().liveBytes <= before) throw new Error("memory: kept tensor not accounted");
    kept.dispose();
    if (backend.memory().liveBytes !== before) throw new Error(`memory: ${backend.memory().liveBytes - before} bytes leaked`);
    if (backend.memory().peakBytes < before + 4000) throw new Error("memory: peak did not record the 4000-byte tensor");
  });

  test("tensor() rejects data that does not fill the shape", () => {
    let msg = "";
    try {
      tensor([1, 2, 3], { shape: [2, 2], backend });
    } catch (e) {
      msg = String(e);
    }
    if (!msg.includes("[2, 2]")) throw new Error(`expected a shape error naming [2, 2], got "${msg}"`);
  });
}
