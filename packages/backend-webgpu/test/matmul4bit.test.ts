/**
 * The fused 4-bit matmul (kernels/matmul4bit.ts) against dequantize-then-matmul: the core's
 * primitive path on the same device (withoutFused) and a float64 host reference, for the real NF4
 * and FP4 tables with bnb's dynamic map as the nested table, with and without double
 * quantization, blocksizes 32..4096, shapes where blocks span rows and K is odd, rows 1 and 37,
 * both orientations, f32 and f16 activations; its dispatch count (one kernel, no dense weight);
 * and weights wider than a storage binding (4 KiB limit: N and K chunks).
 */
import { test } from "node:test";
import { type Backend, type Quant4bitWeight, matmul4bit, quant4bitTensors, tensor } from "@lowrank/tensor";
import { type Quant4bitCase, dequantizeCase, matmulCaseRef, quant4bitCase, quant4bitWeight, rnd, withoutFused } from "@lowrank/tensor/testing";
import { codebook, dynamicMap } from "@lowrank/nf4";
import type { WebGpuBackend } from "../src/backend.ts";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;
const gpu = got as WebGpuBackend;
const t = (name: string, fn: () => Promise<void>) => test(name, { skip, timeout: TIMEOUT_MS }, fn);

/** The random case with a real code table (and bnb's dynamic map as the nested one). */
function realCase(out: number, inF: number, bs: number, nested: boolean, table: "nf4" | "fp4", seed: number): Quant4bitCase {
  const c = quant4bitCase(out, inF, bs, nested, seed);
  return { ...c, code: codebook(table), nested: c.nested && { ...c.nested, code: dynamicMap() } };
}

function dispose(w: Quant4bitWeight): void {
  for (const x of quant4bitTensors(w)) x.dispose();
}

/** Throws naming the first element of `a` farther than atol + rtol |b| from `b`. */
function close(a: Float32Array | number[], b: Float32Array | number[], what: string, atol: number, rtol: number): void {
  if (a.length !== b.length) throw new Error(`${what}: ${a.length} elements, expected ${b.length}`);
  for (let i = 0; i < b.length; i++) {
    if (!(Math.abs(a[i] - b[i]) <= atol + rtol * Math.abs(b[i])))
      throw new Error(`${what}: element ${i} is ${a[i]}, expected ${b[i]} (atol ${atol}, rtol ${rtol})`);
  }
}

/** y = matmul4bit(x, W) on `be` for x [rows, K] given in f32 and cast to `dtype`. */
async function run(be: Backend, c: Quant4bitCase, x: Float32Array, rows: number, transpose: boolean, dtype: "f32" | "f16"): Promise<Float32Array> {
  const K = transpose ? c.out : c.in;
  const w = quant4bitWeight(be, c);
  const x32 = tensor(x, { shape: [rows, K], backend: be });
  const xt = dtype === "f32" ? x32 : x32.cast(dtype);
  const y = matmul4bit(xt, w, transpose);
  if (y.dtype !== dtype) throw new Error(`matmul4bit of ${dtype} x gave ${y.dtype}`);
  const v = Float32Array.from(await y.read());
  for (const z of new Set([y, xt, x32])) z.dispose();
  dispose(w);
  return v;
}

// [out, in, blocksize, nested]: whole-row blocks; blocks spanning rows with I % 4 == 0 (the q4
// decoder); odd I (the per-element decoder); > 256 blocks (two nested blocks); bs 4096 with a
// tail block; bs 32.
const SHAPES: [number, number, number, boolean][] = [
  [48, 64, 64, false],
  [37, 100, 64, true],
  [29, 83, 64, true],
  [40, 520, 64, true],
  [12, 700, 4096, true],
  [9, 4100, 4096, false],
  [21, 36, 32, false],
];

for (const table of ["nf4", "fp4"] as const) {
  t(`matmul4bit ${table}: fused equals dequantize-then-matmul (primitives) and the f64 reference, f32 and f16, both orientations`, async () => {
    for (const [out, inF, bs, nested] of SHAPES) {
      const c = realCase(out, inF, bs, nested, table, out * 7 + inF);
      const W = dequantizeCase(c);
      for (const transpose of [false, true]) {
        const K = transpose ? out : inF;
        for (const rows of [1, 37]) {
          const what = `${table} W [${out}, ${inF}] bs ${bs}${nested ? " DQ" : ""} transpose=${transpose} x [${rows}, ${K}]`;
          const x = rnd(rows * K, rows + K, -1, 1);
          const ref = matmulCaseRef(x, rows, W, out, inF, transpose);
          // f32 accumulation over K terms of |x W| <= 1: a few ulps of the partial sums.
          const atol = 2e-6 * Math.sqrt(K);
          const fused = await run(gpu, c, x, rows, transpose, "f32");
          close(fused, ref, `${what} f32 vs f64 reference`, atol, 1e-5);
          close(fused, await run(withoutFused(gpu), c, x, rows, transpose, "f32"), `${what} f32 vs the primitive path`, atol, 1e-5);
          // f16: the primitive path rounds W to f16 as well, the fused kernel keeps it f32; both round y.
          const xh = Float32Array.from(
            await tensor(x, { shape: [x.length], backend: gpu })
              .cast("f16")
              .read(),
          );
          const refH = matmulCaseRef(xh, rows, W, out, inF, transpose);
          const fusedH = await run(gpu, c, x, rows, transpose, "f16");
          close(fusedH, refH, `${what} f16 vs f64 reference`, 1e-3, 1e-3);
          close(fusedH, await run(withoutFused(gpu), c, x, rows, transpose, "f16"), `${what} f16 vs the primitive path`, 4e-3 * Math.sqrt(K / 64), 4e-3);
        }
      }
    }
  });
}

t("matmul4bit: one dispatch of the fused kernel per call (plus the cast of an f16 result); the primitive path needs many", async () => {
  const c = realCase(64, 128, 64, true, "nf4", 3);
  const count = async (be: Backend, dtype: "f32" | "f16", transpose: boolean) => {
    const K = transpose ? 64 : 128;
    const w = quant4bitWeight(be, c);
    const x32 = tensor(rnd(8 * K, 4), { shape: [8, K], backend: be });
    const xt = dtype === "f32" ? x32 : x32.cast(dtype);
    await gpu.sync();
    const before = gpu.engine.counters.dispatches;
    const names = new Map(gpu.engine.counters.byKernel);
    const y = matmul4bit(xt, w, transpose);
    const n = gpu.engine.counters.dispatches - before;
    const used = [...gpu.engine.counters.byKernel].filter(([k, v]) => v !== (names.get(k) ?? 0)).map(([k]) => k);
    await y.read();
    for (const z of new Set([y, xt, x32])) z.dispose();
    dispose(w);
    return { n, used };
  };
  for (const transpose of [false, true]) {
    const f = await count(gpu, "f32", transpose);
    if (f.n !== 1 || !f.used[0].startsWith("matmul4bit_"))
      throw new Error(`f32 transpose=${transpose}: expected 1 matmul4bit dispatch, saw ${f.n} (${f.used})`);
    const h = await count(gpu, "f16", transpose);
    if (h.n !== 2) throw new Error(`f16 transpose=${transpose}: expected 2 dispatches (matmul4bit, cast), saw ${h.n} (${h.used})`);
    const p = await count(withoutFused(gpu), "f32", transpose);
    if (p.n < 5) throw new Error(`the primitive path: expected several dispatches, saw ${p.n}`);
  }
});

t("matmul4bit: weights wider than one storage binding (4 KiB) split over N and, for the gradient, over K", async () => {
  const small = await acquireBackend({ maxBindingBytes: 4096 });
  if (typeof small === "string") throw new Error(`a second device: ${small}`);
  try {
    for (const [out, inF, bs, nested] of [
      [64, 520, 64, true],
      [120, 83, 32, false],
      [24, 1100, 4096, true],
      [16, 1104, 64, false],
    ] as const) {
      const c = realCase(out, inF, bs, nested, "nf4", out + inF);
      const W = dequantizeCase(c);
      for (const transpose of [false, true]) {
        const K = transpose ? out : inF;
        const x = rnd(5 * K, K, -1, 1);
        const before = small.engine.counters.dispatches;
        const y = await run(small, c, x, 5, transpose, "f32");
        const n = small.engine.counters.dispatches - before;
        const what = `W [${out}, ${inF}] bs ${bs} transpose=${transpose} under a 4 KiB binding`;
        if (n < 2) throw new Error(`${what}: expected the work chunked into >= 2 dispatches (packed is ${(out * inF) / 2} bytes), saw ${n}`);
        close(y, matmulCaseRef(x, 5, W, out, inF, transpose), what, 2e-6 * Math.sqrt(K), 1e-5);
      }
    }
  } finally {
    await small.sync();
    small.dispose();
  }
});
