/**
 * Conformance for matmul4bit: the fused kernel (where a backend has one) and the primitive path
 * against a plain-JS dequantize-then-matmul, on arbitrary bytes in bitsandbytes' layout (the
 * kernel must not care how the weight was quantized). Gradchecks live in gradients.ts.
 */
import type { Backend } from "../backend.ts";
import { type Quant4bitWeight, dequantize4bitWeight, matmul4bit, quant4bitTensors } from "../quant.ts";
import { uniformAt } from "../random.ts";
import { type Tensor, tensor } from "../tensor.ts";
import { type SuiteOptions, expectClose, rnd, withoutFused } from "./util.ts";

/** Host data of one 4-bit weight. */
export interface Quant4bitCase {
  out: number;
  in: number;
  blocksize: number;
  packed: Uint8Array;
  /** f32 absmax, or u8 codes when nested. */
  absmax: Float32Array | Uint8Array;
  code: Float32Array;
  nested?: { absmax: Float32Array; code: Float32Array; offset: number; blocksize: number };
}

/** Random bytes and tables for W [out, in]; `nested` adds double quantization (256 per nested block). */
export function quant4bitCase(out: number, inF: number, blocksize: number, nested: boolean, seed: number): Quant4bitCase {
  const n = out * inF;
  const nb = Math.ceil(n / blocksize);
  const packed = Uint8Array.from({ length: (n + 1) >> 1 }, (_, i) => Math.floor(uniformAt(seed, i) * 256));
  // A sorted table with an exact 0 and ±1, like NF4's (its values do not matter to the kernel).
  const code = Float32Array.from({ length: 16 }, (_, i) => (i === 7 ? 0 : i === 0 ? -1 : i === 15 ? 1 : (i - 7) / 8 + (uniformAt(seed + 1, i) - 0.5) / 20));
  if (!nested) return { out, in: inF, blocksize, packed, code, absmax: rnd(nb, seed + 2, 0.01, 0.5) };
  const nestedCode = Float32Array.from({ length: 256 }, (_, i) => (i - 127.5) / 128);
  return {
    out,
    in: inF,
    blocksize,
    packed,
    code,
    absmax: Uint8Array.from({ length: nb }, (_, i) => Math.floor(uniformAt(seed + 3, i) * 256)),
    nested: { absmax: rnd(Math.ceil(nb / 256), seed + 4, 0.05, 0.2), code: nestedCode, offset: Math.fround(0.25 + uniformAt(seed, 99) / 10), blocksize: 256 },
  };
}

/** W [out, in] exactly as bnb dequantizes it: f32(code * absmax), absmax resolved in f32. */
export function dequantizeCase(c: Quant4bitCase): Float32Array {
  const n = c.out * c.in;
  const w = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const b = Math.floor(i / c.blocksize);
    const scale = c.nested
      ? Math.fround(Math.fround(c.nested.code[c.absmax[b]] * c.nested.absmax[Math.floor(b / c.nested.blocksize)]) + c.nested.offset)
      : c.absmax[b];
    const byte = c.packed[i >> 1];
    w[i] = c.code[i & 1 ? byte & 15 : byte >> 4] * scale; // Float32Array store = one f32 rounding
  }
  return w;
}

/** The case's tensors on `backend` (packed in bnb's [ceil(n/2), 1] shape). */
export function quant4bitWeight(backend: Backend, c: Quant4bitCase): Quant4bitWeight {
  const n = c.out * c.in;
  const t = (data: Float32Array | Uint8Array, shape: number[]) => tensor(data, { shape, dtype: data instanceof Uint8Array ? "u8" : "f32", backend });
  return {
    packed: t(c.packed, [(n + 1) >> 1, 1]),
    absmax: t(c.absmax, [c.absmax.length]),
    code: t(c.code, [16]),
    nested: c.nested && {
      absmax: t(c.nested.absmax, [c.nested.absmax.length]),
      code: t(c.nested.code, [256]),
      offset: c.nested.offset,
      blocksize: c.nested.blocksize,
    },
    blocksize: c.blocksize,
    outFeatures: c.out,
    inFeatures: c.in,
  };
}

function disposeWeight(w: Quant4bitWeight): void {
  for (const t of quant4bitTensors(w)) t.dispose();
}

/** Run an async check on a tensor, then free it (scopes cannot span an await). */
async function checked(t: Tensor, check: (t: Tensor) => Promise<void>): Promise<void> {
  try {
    await check(t);
  } finally {
    t.dispose();
  }
}

/** f64 reference of x [rows, K] times W (transpose=false: Wᵀ). */
export function matmulCaseRef(x: Float32Array, rows: number, W: Float32Array, out: number, inF: number, transpose: boolean): number[] {
  const [K, N] = transpose ? [out, inF] : [inF, out];
  const y = new Array<number>(rows * N).fill(0);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[r * K + k] * (transpose ? W[k * inF + j] : W[j * inF + k]);
      y[r * N + j] = s;
    }
  return y;
}

// [out, in, blocksize, nested]: tails, odd element counts, blocks spanning rows, > 256 blocks (2 nested blocks).
const SHAPES: [number, number, number, boolean][] = [
  [5, 27, 64, false],
  [7, 37, 32, true],
  [33, 520, 64, true],
  [9, 130, 128, false],
  [3, 3, 64, true],
];

export function quantForwardSuite(opts: SuiteOptions): void {
  const { backend, test } = opts;
  const tol = opts.tolScale ?? 1;
  for (const [label, be] of [
    ["fused", backend],
    ["composite", withoutFused(backend)],
  ] as const) {
    test(`matmul4bit vs dequantize-then-matmul, both transposes, tails, double quant (${label})`, async () => {
      for (const [out, inF, bs, nested] of SHAPES) {
        const c = quant4bitCase(out, inF, bs, nested, out * 31 + inF);
        const W = dequantizeCase(c);
        const what = `[${out}, ${inF}] blocksize ${bs}${nested ? " DQ" : ""}`;
        const w = quant4bitWeight(be, c);
        await checked(dequantize4bitWeight(w), (t) => expectClose(t, Array.from(W), `dequantize4bitWeight ${what}`, 0, 2e-7));
        for (const transpose of [false, true]) {
          const K = transpose ? out : inF;
          for (const shape of [
            [1, K],
            [4, K],
            [2, 3, K],
          ]) {
            const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
            const x = rnd(rows * K, out + inF + rows, -1, 1);
            const ref = { data: matmulCaseRef(x, rows, W, out, inF, transpose), shape: [...shape.slice(0, -1), transpose ? inF : out] };
            const xt = tensor(x, { shape, backend: be });
            await checked(matmul4bit(xt, w, transpose), (y) =>
              expectClose(y, ref, `matmul4bit ${what} transpose=${transpose} x [${shape}]`, 2e-5 * tol, 1e-5 * tol),
            );
            xt.dispose();
          }
        }
        disposeWeight(w);
      }
    });

    test(`matmul4bit: f16 activations, strided x, weight gets no gradient (${label})`, async () => {
      const c = quant4bitCase(6, 66, 64, true, 7);
      const W = dequantizeCase(c);
      const x = rnd(2 * 66, 8);
      const ref = matmulCaseRef(x, 2, W, 6, 66, false);
      const w = quant4bitWeight(be, c);
      if (be.dtypes.includes("f16")) {
        const x16 = tensor(x, { shape: [2, 66], backend: be, dtype: "f16" });
        await checked(matmul4bit(x16, w), (y) => {
          if (y.dtype !== "f16") throw new Error(`matmul4bit of f16 x gave ${y.dtype}`);
          return expectClose(y, ref, "matmul4bit f16", 2e-2, 1e-2);
        });
        x16.dispose();
      }
      // A transposed view as x: x [66, 2]ᵀ.
      const xt = tensor(
        Array.from({ length: 132 }, (_, i) => x[(i % 2) * 66 + Math.floor(i / 2)]),
        { shape: [66, 2], backend: be },
      );
      await checked(matmul4bit(xt.T, w), (y) => expectClose(y, ref, "matmul4bit of a transposed view", 2e-5 * tol, 1e-5 * tol));
      xt.dispose();
      // Only x is differentiable, even when someone marks a float buffer of the weight.
      const xs = tensor(x, { shape: [2, 66], backend: be, requiresGrad: true });
      w.code.setRequiresGrad();
      const loss = matmul4bit(xs, w).sum();
      loss.backward();
      loss.dispose();
      if (!xs.grad) throw new Error("matmul4bit: x got no gradient");
      if (w.code.grad || w.packed.grad || w.absmax.grad) throw new Error("matmul4bit: the weight got a gradient");
      const gx = await xs.grad.read();
      for (let k = 0; k < 66; k++) {
        let s = 0;
        for (let o = 0; o < 6; o++) s += W[o * 66 + k];
        if (Math.abs(gx[k] - s) > 1e-5 + 1e-5 * Math.abs(s)) throw new Error(`matmul4bit: d sum / dx[0, ${k}] = ${gx[k]}, expected ${s}`);
      }
      xs.zeroGrad();
      xs.dispose();
      disposeWeight(w);
    });
  }

  test("matmul4bit: the fused kernel and the primitive path agree within f32 rounding", async () => {
    const c = quant4bitCase(70, 96, 64, true, 11);
    const x = rnd(5 * 96, 12);
    const run = async (be: Backend) => {
      const w = quant4bitWeight(be, c);
      const xt = tensor(x, { shape: [5, 96], backend: be });
      const y = matmul4bit(xt, w);
      const v = await y.read();
      for (const t of [y, xt]) t.dispose();
      disposeWeight(w);
      return v;
    };
    const a = await run(backend);
    const b = await run(withoutFused(backend));
    for (let i = 0; i < a.length; i++) {
      if (Math.abs(a[i] - b[i]) > 1e-5 * (1 + Math.abs(b[i]))) throw new Error(`element ${i}: fused ${a[i]}, primitives ${b[i]}`);
    }
  });
}

/** Gradcheck cases (for gradients.ts): the weight is built inside fn on the variant's backend. */
export function quantGradCases(be: Backend): { name: string; fn: (x: Tensor) => Tensor; inputs: { data: Float32Array; shape: number[] }[] }[] {
  const c = quant4bitCase(5, 37, 32, true, 21);
  const c2 = quant4bitCase(6, 20, 64, false, 22);
  return [
    { name: "matmul4bit (x · Wᵀ, double quant, tails)", fn: (x) => matmul4bit(x, quant4bitWeight(be, c)), inputs: [{ data: rnd(2 * 37, 80), shape: [2, 37] }] },
    {
      name: "matmul4bit transposed (x · W, batch dims)",
      fn: (x) => matmul4bit(x, quant4bitWeight(be, c2), true),
      inputs: [{ data: rnd(2 * 2 * 6, 81), shape: [2, 2, 6] }],
    },
  ];
}
