/**
 * The CPU 4-bit dequant-matmul against dequantize-then-matmul: both paths (the fused small-M
 * loop and dequantized panels on the engine), several panels with a short last one, both
 * transposes, odd shapes, tails, blocksizes 64 and 128, with and without double quantization.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dequantizeCase, matmulCaseRef, quant4bitCase, rnd } from "@lowrank/tensor/testing";
import { createCpuBackend, createMatmulEngine } from "../src/index.ts";
import { BlasEngine } from "../src/blas/engine.ts";
import { blockScales, matmul4bitHost } from "../src/kernels/matmul4bit.ts";
import { ElementwiseWasm } from "../src/wasm/elementwise.ts";

// The WASM SIMD 4-bit loops, relaxed (FMA, one-pshufb lookups) and plain builds, beside TypeScript.
const WASM = [
  ["typescript", null],
  ["wasm", ElementwiseWasm.create()],
  ["wasm plain", ElementwiseWasm.create({ relaxed: false })],
] as const;

const engine = createMatmulEngine({ threads: 0 });
// The BLAS path takes its own panels (whole rows of W, sgemm with transposes); checked when a BLAS loads.
const blasBackend = createCpuBackend({ threads: 0, blas: "auto" });
const blas = blasBackend.engine instanceof BlasEngine ? blasBackend.engine : null;
const ENGINES = [["wasm", engine], ...(blas ? [["blas", blas] as const] : [])] as const;

function maxRelErr(got: Float32Array, ref: number[]): number {
  let m = 0;
  for (let i = 0; i < ref.length; i++) m = Math.max(m, Math.abs(got[i] - ref[i]) / (1 + Math.abs(ref[i])));
  return m;
}

// [out, in, blocksize, double quant]
const SHAPES: [number, number, number, boolean][] = [
  [37, 50, 64, true], // n = 1850: tail block of 58, blocks span rows
  [23, 41, 128, false], // odd n = 943: a lone high nibble at the end
  [64, 64, 64, true], // exact blocks
  [45, 300, 64, true], // 211 blocks; panels of 8 columns, the last one short
  [300, 60, 128, true], // > 256 blocks: two nested blocks
  [40, 256, 64, true], // rows on block boundaries: the WASM one-row product and aligned dequant
  [72, 128, 16, false], // blocksize 16: one 16-code group per block
];

for (const [out, inF, bs, dq] of SHAPES) {
  test(`matmul4bit [${out}, ${inF}] blocksize ${bs}${dq ? " DQ" : ""}: small-M loop and panels match dequantize-then-matmul`, () => {
    const c = quant4bitCase(out, inF, bs, dq, out + inF);
    const W = dequantizeCase(c);
    const w = { ...c, outFeatures: out, inFeatures: inF };
    for (const transpose of [false, true]) {
      const [K, N] = transpose ? [out, inF] : [inF, out];
      for (const M of [1, 3, 7, 20]) {
        const x = rnd(M * K, M + K);
        const ref = matmulCaseRef(x, M, W, out, inF, transpose);
        for (const [label, opts] of [
          ["small-M loop", { smallM: 1000 }],
          ["panels of 8", { smallM: 0, panelFloats: 8 * K }],
          ["default", {}],
        ] as const) {
          for (const [name, eng] of ENGINES) {
            for (const [kind, wasm] of WASM) {
              const y = new Float32Array(M * N).fill(NaN);
              matmul4bitHost(eng, w, x, M, transpose, y, { ...opts, wasm });
              const err = maxRelErr(y, ref);
              assert.ok(err < 2e-6, `${label} on ${name} (${kind}) transpose=${transpose} M=${M}: max rel err ${err}`);
            }
          }
        }
      }
    }
  });
}

test("blockScales resolves double quantization exactly as bitsandbytes (f32 mul, then f32 add)", () => {
  const c = quant4bitCase(40, 700, 64, true, 5);
  const s = blockScales({ ...c, outFeatures: 40, inFeatures: 700 });
  const n = c.nested!;
  for (let b = 0; b < s.length; b++) {
    assert.equal(s[b], Math.fround(Math.fround(n.code[c.absmax[b]] * n.absmax[Math.floor(b / 256)]) + n.offset));
  }
});

for (const [out, inF] of [
  [19, 70],
  [40, 200],
]) {
  test(`panels dequantize exactly: x = one-hot rows reproduce W [${out}, ${inF}] bit for bit`, () => {
    const c = quant4bitCase(out, inF, 64, true, 9);
    const W = dequantizeCase(c);
    const eye = new Float32Array(inF * inF);
    for (let i = 0; i < inF; i++) eye[i * inF + i] = 1;
    for (const [kind, wasm] of WASM) {
      const y = new Float32Array(inF * out); // eye · Wᵀ = Wᵀ
      // Panels of 8 rows (560 / 1600 codes) take the scalar loop at 70 and WASM past its minimum at 200.
      matmul4bitHost(engine, { ...c, outFeatures: out, inFeatures: inF }, eye, inF, false, y, { smallM: 0, panelFloats: 8 * inF, wasm });
      for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) assert.equal(y[i * out + o], W[o * inF + i], `${kind}: W[${o}, ${i}]`);
    }
  });
}

test("the WASM 4-bit loops run: one-row product and dequantize agree with TypeScript", () => {
  const ew = WASM[1][1];
  assert.ok(ew, "this runtime has WASM SIMD");
  const [out, inF, bs] = [96, 512, 64];
  const c = quant4bitCase(out, inF, bs, true, 11);
  const w = { ...c, outFeatures: out, inFeatures: inF };
  const scales = blockScales(w);
  const x = rnd(inF, 12);
  const y = new Float32Array(out);
  assert.equal(ew.gemv4bit(c.packed, scales, c.code, bs, x, out, inF, y), true);
  const ref = matmulCaseRef(x, 1, dequantizeCase(c), out, inF, false);
  assert.ok(maxRelErr(y, ref) < 2e-6, `gemv4bit: ${maxRelErr(y, ref)}`);
  const d = new Float32Array(out * inF);
  assert.equal(ew.dequant4bit(c.packed, scales, c.code, bs, 0, out * inF, d, 0), true);
  assert.deepEqual(d, dequantizeCase(c));
  // Shapes it does not take: rows off block boundaries, unaligned ranges.
  assert.equal(ew.gemv4bit(c.packed, scales, c.code, bs, x, out, inF - 8, y), false);
  assert.equal(ew.dequant4bit(c.packed, scales, c.code, bs, 8, out * inF, d, 0), false);
});

test("a packed view at an odd byte offset (no 32-bit word loads) gives the same products", () => {
  const [out, inF] = [13, 150];
  const c = quant4bitCase(out, inF, 64, true, 4);
  const shifted = new Uint8Array(c.packed.length + 1).subarray(1);
  shifted.set(c.packed);
  const W = dequantizeCase(c);
  for (const transpose of [false, true]) {
    const K = transpose ? out : inF;
    const x = rnd(K, 3);
    const ref = matmulCaseRef(x, 1, W, out, inF, transpose);
    for (const packed of [c.packed, shifted]) {
      const y = new Float32Array(transpose ? inF : out);
      matmul4bitHost(engine, { ...c, packed, outFeatures: out, inFeatures: inF }, x, 1, transpose, y);
      assert.ok(maxRelErr(y, ref) < 2e-6, `byteOffset ${packed.byteOffset} transpose=${transpose}: ${maxRelErr(y, ref)}`);
    }
  }
});
