/**
 * WebGPU kernels against the CPU reference on random data: every dtype, strided and broadcast
 * views, all matmul layouts, packed (u8/f16/bf16) outputs, reductions, indexing, fused kernels.
 */
import { test } from "node:test";
import {
  type Backend,
  type BinaryOp,
  type DType,
  type UnaryOp,
  binary,
  concat,
  crossEntropy,
  embedding,
  gather,
  arange,
  full,
  logSoftmax,
  rand,
  rmsNorm,
  scatterAdd,
  softmax,
  uniformAt,
  unary,
  where,
} from "@lowrank/tensor";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";
import { agree, mk, vals } from "./helpers-cpu.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;
const gpu = got as Backend;
const t = (name: string, fn: () => Promise<void>) => test(name, { skip, timeout: TIMEOUT_MS }, fn);

const EDGES = [
  0,
  -0,
  1,
  -1,
  0.5,
  2.5,
  -2.5,
  3.5,
  65504,
  65520,
  1e-8,
  6e-8,
  1e-5,
  3e38,
  -3e38,
  1e10,
  -1e10,
  2 ** 31,
  -(2 ** 31),
  2 ** 32 + 5,
  300,
  255.9,
  -256.5,
  Infinity,
  -Infinity,
  NaN,
  1 / 3,
  1.00048828125,
];

t("casts between every dtype pair match the CPU bit for bit (edge values)", async () => {
  const dtypes: DType[] = ["f32", "f16", "bf16", "i32", "u8"];
  for (const from of dtypes) {
    for (const to of dtypes) {
      await agree(gpu, `cast ${from}->${to}`, (be) => mk(be, EDGES, [EDGES.length], "f32").cast(from).cast(to));
    }
  }
});

t("unary ops: strided views, every dtype they accept", async () => {
  const ops: UnaryOp[] = ["neg", "exp", "log", "sqrt", "recip", "sin", "cos", "tanh", "sigmoid", "abs", "relu"];
  const d = vals(6 * 7, 1, -4, 4);
  for (const op of ops) {
    const pos = op === "log" || op === "sqrt" || op === "recip";
    const data = pos ? d.map(Math.abs) : d;
    await agree(gpu, `unary ${op} f32 transposed`, (be) => unary(op, mk(be, data, [6, 7]).T), 1e-6, 2e-6);
    for (const dt of ["f16", "bf16"] as DType[]) {
      // halves: one rounding of the f32 result; transcendental ulp differences may flip the last half bit
      await agree(gpu, `unary ${op} ${dt}`, (be) => unary(op, mk(be, data, [6, 7], dt).narrow(1, 1, 5)), 1e-6, 8e-3);
    }
  }
  for (const op of ["neg", "abs", "relu"] as UnaryOp[]) {
    for (const dt of ["i32", "u8"] as DType[]) await agree(gpu, `unary ${op} ${dt}`, (be) => unary(op, mk(be, [0, 1, 5, 200, 255, 7, 3], [7], "i32").cast(dt)));
  }
  await agree(gpu, "tanh at large |x| is +-1, not NaN", (be) => mk(be, [-100, -20, 20, 100, 1e-3, -1e-3], [6]).tanh(), 1e-7, 1e-6);
  await agree(gpu, "sigmoid at large |x|", (be) => mk(be, [-200, -50, 50, 200], [4]).sigmoid(), 1e-30, 1e-5);
});

t("binary ops: broadcasting, integer wrap and division, u8 wrap, NaN rules", async () => {
  const ops: BinaryOp[] = ["add", "sub", "mul", "div", "max", "min", "pow", "lt", "eq"];
  const a = vals(24, 2, -3, 3).map((v, i) => (i % 5 === 0 ? Math.round(v) : v));
  const b = vals(6, 3, -3, 3).map((v, i) => (i === 2 ? 0 : i === 4 ? 2 : v));
  for (const op of ops) {
    await agree(gpu, `${op} f32 [2,3,4]x[3,1]`, (be) => binary(op, mk(be, a, [2, 3, 4]), mk(be, b.slice(0, 3), [3, 1])), 1e-6, 1e-5);
    await agree(gpu, `${op} f32 permuted x broadcast row`, (be) => binary(op, mk(be, a, [4, 6]).T, mk(be, b.slice(0, 4), [4])), 1e-6, 1e-5);
    await agree(gpu, `${op} f16`, (be) => binary(op, mk(be, a, [4, 6], "f16"), mk(be, b, [6], "f16")), 0, 2e-3);
    await agree(gpu, `${op} bf16`, (be) => binary(op, mk(be, a, [4, 6], "bf16"), mk(be, b, [6], "bf16")), 0, 1e-2);
  }
  const ia = [7, -7, 2147483647, -2147483648, 5, 0, 100000, -3, 2, -1];
  const ib = [2, 2, 1, -1, 0, 0, 100000, 4, -1, -5];
  for (const op of ops) {
    await agree(gpu, `${op} i32`, (be) => binary(op, mk(be, ia, [10], "i32"), mk(be, ib, [10], "i32")));
    await agree(gpu, `${op} u8`, (be) =>
      binary(op, mk(be, [200, 3, 255, 0, 17, 9, 128, 1, 2, 250], [10], "u8"), mk(be, [100, 5, 1, 0, 0, 3, 2, 255, 7, 6], [10], "u8")),
    );
  }
  const special = [NaN, 1, -1, 0, -0, Infinity, -Infinity, 2];
  for (const op of ops) {
    await agree(gpu, `${op} specials`, (be) => binary(op, mk(be, special, [8, 1]), mk(be, special, [1, 8])), 0, 1e-6);
  }
  await agree(
    gpu,
    "pow negative base, integer exponents",
    (be) => binary("pow", mk(be, [-2, -2, -0.5, -3, 0, -0], [6]), mk(be, [3, -2, 2, 0.5, -1, -3], [6])),
    0,
    1e-6,
  );
});

t("where and copies of u8/f16/bf16 views with odd offsets", async () => {
  const c = [1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0];
  for (const dt of ["f32", "f16", "bf16", "i32", "u8"] as DType[]) {
    await agree(gpu, `where ${dt}`, (be) => where(mk(be, c, [3, 4], "u8"), mk(be, vals(12, 4, 0, 50), [3, 4], dt), mk(be, vals(4, 5, 0, 50), [4], dt)));
    await agree(gpu, `copy of a sliced transposed ${dt}`, (be) => mk(be, vals(35, 6, 0, 100), [5, 7], dt).narrow(1, 1, 5).T.contiguous());
    await agree(gpu, `copy at an odd offset ${dt}`, (be) => mk(be, vals(35, 7, 0, 100), [35], dt).narrow(0, 3, 29).contiguous());
  }
});

t("creation: full for every dtype, arange, random at a 64-bit counter offset", async () => {
  for (const dt of ["f32", "f16", "bf16", "i32", "u8"] as DType[]) {
    for (const v of [0, -0, 1.5, -7, 300, 1e10, NaN, Infinity, 65520]) await agree(gpu, `full ${dt} ${v}`, (be) => full([5], v, { dtype: dt, backend: be }));
    await agree(gpu, `arange ${dt}`, (be) => arange(7, { dtype: dt, start: 3, step: 2, backend: be }));
    await agree(gpu, `arange ${dt} fractional`, (be) => arange(9, { dtype: dt, start: -1.5, step: 0.25, backend: be }));
  }
  for (const offset of [0, 7, 2 ** 32 - 3, 2 ** 40 + 11]) {
    await agree(gpu, `rand offset ${offset}`, (be) => rand([3, 50], 1234, offset, { backend: be }));
  }
  const r = await rand([4], 99, 2 ** 33, { backend: gpu }).read();
  for (let i = 0; i < 4; i++) if (r[i] !== uniformAt(99, 2 ** 33 + i)) throw new Error(`random ${i}: ${r[i]} != ${uniformAt(99, 2 ** 33 + i)}`);
});

t("matmul: every layout pair, odd sizes, tails, batches with broadcast, halves and integers", async () => {
  const shapes: [number, number, number][] = [
    [5, 7, 3],
    [8, 8, 8],
    [33, 65, 17],
    [64, 12, 68],
    [4, 4, 4],
    [1, 9, 1],
    [67, 130, 36],
  ];
  for (const [M, K, N] of shapes) {
    const a = vals(M * K, 10 + M);
    const b = vals(K * N, 20 + N);
    for (const ta of [false, true]) {
      for (const tb of [false, true]) {
        await agree(
          gpu,
          `matmul ${M}x${K}x${N} ta=${ta} tb=${tb}`,
          (be) => {
            const A = ta ? mk(be, a, [K, M]).T : mk(be, a, [M, K]);
            const B = tb ? mk(be, b, [N, K]).T : mk(be, b, [K, N]);
            return A.matmul(B);
          },
          1e-5,
          1e-4,
        );
      }
    }
    await agree(
      gpu,
      `matmul ${M}x${K}x${N} strided (sliced) operands`,
      (be) =>
        mk(be, vals(M * (K + 3), 3), [M, K + 3])
          .narrow(1, 1, K)
          .matmul(mk(be, vals((K + 1) * N, 4), [K + 1, N]).narrow(0, 1, K)),
      1e-5,
      1e-4,
    );
  }
  await agree(
    gpu,
    "batched with broadcast batch dims",
    (be) => mk(be, vals(2 * 3 * 8 * 12, 5), [2, 3, 8, 12]).matmul(mk(be, vals(3 * 12 * 8, 6), [1, 3, 12, 8]).expand([2, 3, 12, 8])),
    1e-5,
    1e-4,
  );
  await agree(
    gpu,
    "batched transposed views (attention scores)",
    (be) => {
      const q = mk(be, vals(2 * 5 * 4 * 8, 7), [2, 5, 4, 8]).permute(0, 2, 1, 3);
      const k = mk(be, vals(2 * 6 * 4 * 8, 8), [2, 6, 4, 8]).permute(0, 2, 3, 1);
      return q.matmul(k);
    },
    1e-5,
    1e-4,
  );
  for (const dt of ["f16", "bf16"] as DType[]) {
    await agree(
      gpu,
      `matmul ${dt}`,
      (be) => mk(be, vals(9 * 16, 9), [9, 16], dt).matmul(mk(be, vals(16 * 12, 10), [16, 12], dt)),
      1e-3,
      dt === "f16" ? 2e-3 : 1e-2,
    );
    await agree(
      gpu,
      `matmul ${dt} transposed, odd`,
      (be) => mk(be, vals(7 * 5, 9), [5, 7], dt).T.matmul(mk(be, vals(5 * 3, 10), [3, 5], dt).T),
      1e-3,
      dt === "f16" ? 2e-3 : 1e-2,
    );
  }
  await agree(gpu, "matmul i32", (be) => mk(be, [1, 2, 3, 4, 5, 6], [2, 3], "i32").matmul(mk(be, [7, -8, 9, 10, -11, 12], [3, 2], "i32")));
});

t("reductions: sum/max over permuted views, keepdim, every dtype, long and short rows", async () => {
  const d = vals(4 * 70 * 5, 30, -5, 5);
  for (const dt of ["f32", "f16", "bf16", "i32", "u8"] as DType[]) {
    const tol = dt === "f32" ? 1e-5 : dt === "i32" || dt === "u8" ? 0 : 1e-2;
    const src = (be: Backend) =>
      mk(
        be,
        d.map((v) => (dt === "u8" ? Math.abs(v) * 20 : v * (dt === "i32" ? 100 : 1))),
        [4, 70, 5],
        dt,
      );
    for (const axes of [[2], [1], [0, 2], [0, 1, 2]]) {
      await agree(gpu, `sum ${dt} ${axes}`, (be) => src(be).sum(axes), tol, tol);
      await agree(gpu, `max ${dt} ${axes}`, (be) => src(be).max(axes));
    }
  }
  await agree(gpu, "max over an empty axis is -inf", (be) => mk(be, [], [3, 0]).max(1));
  await agree(gpu, "max NaN propagates (long row)", (be) => mk(be, [...vals(200, 31), NaN, ...vals(55, 32)], [256]).max());
});

t("gather, scatterAdd (deterministic, non-shared columns), embedding, concat of packed dtypes", async () => {
  const x = vals(6 * 9, 40);
  const idx = Array.from({ length: 6 * 5 }, (_, i) => Math.floor(uniformAt(41, i) * 9));
  await agree(gpu, "gather axis 1", (be) => gather(mk(be, x, [6, 9]), mk(be, idx, [6, 5], "i32"), 1));
  await agree(gpu, "gather axis 0 of a transposed view", (be) =>
    gather(
      mk(be, x, [9, 6]).T,
      mk(
        be,
        idx.map((v) => v % 6),
        [6, 5],
        "i32",
      ).T.contiguous().T,
      1,
    ),
  );
  for (const dt of ["f32", "f16", "u8"] as DType[]) {
    await agree(gpu, `gather ${dt}`, (be) =>
      gather(
        mk(
          be,
          x.map((v) => Math.abs(v) * 100),
          [6, 9],
          dt,
        ),
        mk(be, idx, [6, 5], "i32"),
        1,
      ),
    );
  }
  const src = vals(6 * 5, 42);
  await agree(gpu, "scatterAdd axis 1, per-row index lists", (be) => scatterAdd([6, 9], mk(be, idx, [6, 5], "i32"), mk(be, src, [6, 5]), 1), 1e-6, 1e-6);
  await agree(
    gpu,
    "scatterAdd axis 0 into a wider output",
    (be) => scatterAdd([9, 7], mk(be, idx.slice(0, 20), [4, 5], "i32"), mk(be, src.slice(0, 20), [4, 5]), 0),
    1e-6,
    1e-6,
  );
  await agree(gpu, "scatterAdd i32", (be) =>
    scatterAdd(
      [6, 9],
      mk(be, idx, [6, 5], "i32"),
      mk(
        be,
        src.map((v) => Math.round(v * 10)),
        [6, 5],
        "i32",
      ),
      1,
    ),
  );
  const ids = Array.from({ length: 40 }, (_, i) => Math.floor(uniformAt(43, i) * 11));
  await agree(gpu, "embedding forward", (be) => embedding(mk(be, vals(11 * 6, 44), [11, 6]), mk(be, ids, [5, 8], "i32")));
  // embedding backward = scatterAdd with a shared index list; run twice: bit-identical (no atomics)
  const grad = async () => {
    const table = mk(gpu, vals(11 * 6, 44), [11, 6]).setRequiresGrad();
    embedding(table, mk(gpu, ids, [5, 8], "i32"))
      .mul(mk(gpu, vals(40 * 6, 45), [5, 8, 6]))
      .sum()
      .backward();
    return table.grad!.read();
  };
  const [g1, g2] = [await grad(), await grad()];
  if (g1.some((v, i) => !Object.is(v, g2[i]))) throw new Error("embedding gradient is not deterministic");
  for (const dt of ["f32", "f16", "bf16", "u8", "i32"] as DType[]) {
    for (const axis of [0, 1, 2]) {
      await agree(gpu, `concat ${dt} axis ${axis}`, (be) => {
        const p = (s: number[], seed: number) =>
          mk(
            be,
            vals(
              s.reduce((a, b) => a * b),
              seed,
              0,
              90,
            ),
            s,
            dt,
          );
        const shapes = [
          [3, 3, 5],
          [3, 3, 5],
          [3, 3, 5],
        ].map((s, i) => s.map((v, d) => (d === axis ? v + i : v)));
        return concat([p(shapes[0], 50), p(shapes[1], 51).narrow(axis, 0, shapes[1][axis]), p(shapes[2], 52)], axis);
      });
    }
  }
});

t("fused kernels vs CPU fused kernels on long rows, halves, ignore index", async () => {
  const n = 1000;
  const d = vals(3 * n, 60, -6, 6);
  for (const dt of ["f32", "f16", "bf16"] as DType[]) {
    const tol = dt === "f32" ? 1e-5 : 1e-2;
    await agree(gpu, `softmax ${dt}`, (be) => softmax(mk(be, d, [3, n], dt)), 1e-7, tol);
    await agree(gpu, `logSoftmax ${dt}`, (be) => logSoftmax(mk(be, d, [3, n], dt)), 1e-5, tol);
    await agree(gpu, `rmsNorm ${dt}`, (be) => rmsNorm(mk(be, d, [3, n], dt), mk(be, vals(n, 61, 0.5, 1.5), [n], dt)), 1e-5, tol);
  }
  const targets = [5, -100, 999];
  await agree(gpu, "crossEntropy", (be) => crossEntropy(mk(be, d, [3, n]), mk(be, targets, [3], "i32"), { reduction: "none" }), 1e-5, 1e-5);
  const grads = async (be: Backend) => {
    const x = mk(be, d, [3, n]).setRequiresGrad();
    const w = mk(be, vals(n, 62, 0.5, 1.5), [n]).setRequiresGrad();
    const y = rmsNorm(x, w);
    const loss = crossEntropy(softmax(y).add(logSoftmax(y)), mk(be, targets, [3], "i32"));
    loss.backward();
    return [await x.grad!.read(), await w.grad!.read()];
  };
  const [gg, cg] = [await grads(gpu), await grads((await import("./helpers-cpu.ts")).cpu)];
  for (let k = 0; k < 2; k++) {
    gg[k].forEach((v, i) => {
      if (Math.abs(v - cg[k][i]) > 1e-6 + 1e-4 * Math.abs(cg[k][i])) throw new Error(`fused backward ${k} element ${i}: ${v} vs ${cg[k][i]}`);
    });
  }
});

t("halves without shader-f16: unpacked u32 pairs give the same results", async () => {
  const plain = (await acquireBackend({}, { f16: false })) as Backend & { hasF16: boolean; dispose(): void };
  try {
    if (plain.hasF16) throw new Error("f16: false still enabled shader-f16");
    await agree(
      plain,
      "matmul f16 (unpacked)",
      (be) => mk(be, vals(9 * 16, 9), [9, 16], "f16").matmul(mk(be, vals(16 * 12, 10), [16, 12], "f16").T.contiguous().T),
      1e-3,
      2e-3,
    );
    await agree(plain, "f16 add and cast", (be) =>
      mk(be, EDGES, [EDGES.length], "f16")
        .add(
          mk(
            be,
            EDGES.map((v) => v / 3),
            [EDGES.length],
            "f16",
          ),
        )
        .cast("f32"),
    );
  } finally {
    plain.dispose();
  }
});

t("dispose", async () => {
  await gpu.sync();
  gpu.dispose();
});
