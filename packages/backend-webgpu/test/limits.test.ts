/**
 * Tensors larger than one storage binding. The limit is lowered to 4 KiB so the chunking paths
 * (elementwise/copy/cast/where/concat boxes, reduce row chunks and split rows, matmul tiles and
 * K splits, gather windows, scatterAdd and fused row chunks) run on small, fast tensors.
 */
import { test } from "node:test";
import { type Backend, concat, crossEntropy, embedding, gather, rmsNorm, scatterAdd, softmax, uniformAt, where } from "@lowrank/tensor";
import type { WebGpuBackend } from "../src/backend.ts";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";
import { agree, mk, vals } from "./helpers-cpu.ts";

const LIMIT = 4096;
const got = await acquireBackend({ maxBindingBytes: LIMIT });
const skip = typeof got === "string" ? got : false;
const gpu = got as WebGpuBackend;
const be = gpu as Backend;
const t = (name: string, fn: () => Promise<void>) => test(name, { skip, timeout: TIMEOUT_MS }, fn);

/** Run `fn` and require it to have split work into more dispatches than `min`. */
async function chunked(min: number, fn: () => Promise<void>): Promise<void> {
  const before = gpu.engine.counters.dispatches;
  await fn();
  const n = gpu.engine.counters.dispatches - before;
  if (n < min) throw new Error(`expected the work to be chunked into >= ${min} dispatches, saw ${n}`);
}

t("elementwise, broadcast, where, comparisons into packed u8, transposed copy", async () => {
  const a = vals(100 * 100, 1);
  const b = vals(100, 2);
  await chunked(10, () => agree(be, "exp [100,100]", (x) => mk(x, a, [100, 100]).exp(), 1e-6, 1e-6));
  await chunked(10, () => agree(be, "add broadcast column", (x) => mk(x, a, [100, 100]).add(mk(x, b, [100, 1])), 1e-6, 1e-6));
  await agree(be, "lt -> u8", (x) => mk(x, a, [100, 100]).lt(mk(x, b, [100])));
  await agree(be, "where", (x) => where(mk(x, a, [100, 100]).lt(0), mk(x, a, [100, 100]), mk(x, b, [100, 1])));
  await chunked(4, () => agree(be, "transposed copy", (x) => mk(x, a.slice(0, 120 * 80), [120, 80]).T.contiguous()));
  await agree(be, "f16 cast and add, odd length", (x) =>
    mk(x, a.slice(0, 3001), [3001])
      .cast("f16")
      .add(mk(x, a.slice(1, 3002), [3001], "f16")),
  );
  await agree(be, "u8 concat along the last axis", (x) =>
    concat([mk(x, vals(50 * 33, 3, 0, 200), [50, 33], "u8"), mk(x, vals(50 * 47, 4, 0, 200), [50, 47], "u8")], 1),
  );
});

t("reductions: chunked rows, rows wider than a binding (split and combined)", async () => {
  const d = vals(300 * 50, 5);
  await agree(be, "sum rows", (x) => mk(x, d, [50, 300]).sum(1), 1e-5, 1e-5);
  await agree(be, "sum over axis 0 (column sums)", (x) => mk(x, d, [300, 50]).sum(0), 1e-5, 1e-5);
  await agree(be, "max of everything", (x) => mk(x, d, [300, 50]).max(), 0, 0);
  await agree(be, "f16 sum over axis 0", (x) => mk(x, d, [300, 50], "f16").sum(0), 1e-2, 1e-2);
  await agree(be, "i32 sum of everything", (x) =>
    mk(
      x,
      d.map((v) => Math.round(v * 1000)),
      [15000],
      "i32",
    ).sum(),
  );
});

t("matmul: tiles per window, K split for a wide row-major B, transposed weights", async () => {
  await chunked(4, () => agree(be, "[70,300] x [300,90]", (x) => mk(x, vals(70 * 300, 6), [70, 300]).matmul(mk(x, vals(300 * 90, 7), [300, 90])), 1e-4, 1e-4));
  await agree(be, "x @ W.T", (x) => mk(x, vals(70 * 200, 8), [70, 200]).matmul(mk(x, vals(90 * 200, 9), [90, 200]).T), 1e-4, 1e-4);
  await agree(be, "batched", (x) => mk(x, vals(3 * 40 * 64, 10), [3, 40, 64]).matmul(mk(x, vals(3 * 64 * 30, 11), [3, 64, 30])), 1e-4, 1e-4);
});

t("gather over several bindings, scatterAdd and fused kernels in row chunks", async () => {
  const ids = Array.from({ length: 60 }, (_, i) => Math.floor(uniformAt(12, i) * 200));
  await agree(be, "embedding from a table spanning 4 bindings", (x) => embedding(mk(x, vals(200 * 20, 13), [200, 20]), mk(x, ids, [60], "i32")));
  await agree(be, "gather axis 1", (x) => gather(mk(x, vals(20 * 200, 14), [20, 200]), mk(x, ids.slice(0, 40), [20, 2], "i32"), 1));
  await agree(
    be,
    "scatterAdd into [200, 20]",
    (x) => scatterAdd([200, 20], mk(x, ids, [60, 1], "i32").expand([60, 20]), mk(x, vals(60 * 20, 15), [60, 20]), 0),
    1e-6,
    1e-5,
  );
  const d = vals(40 * 500, 16, -4, 4);
  await agree(be, "softmax", (x) => softmax(mk(x, d, [40, 500])), 1e-7, 1e-5);
  await agree(
    be,
    "crossEntropy",
    (x) =>
      crossEntropy(
        mk(x, d, [40, 500]),
        mk(
          x,
          ids.slice(0, 40).map((v) => v * 2),
          [40],
          "i32",
        ),
      ),
    1e-5,
    1e-5,
  );
  const gw = (x: Backend) => {
    const w = mk(x, vals(500, 17, 0.5, 1.5), [500]).setRequiresGrad();
    rmsNorm(mk(x, d, [40, 500]), w)
      .mul(mk(x, vals(40 * 500, 18), [40, 500]))
      .sum()
      .backward();
    return w.grad!;
  };
  await agree(be, "rmsNorm weight gradient accumulated across row chunks", gw, 1e-5, 1e-4);
});

t("dispose", async () => {
  await gpu.sync();
  gpu.dispose();
});
