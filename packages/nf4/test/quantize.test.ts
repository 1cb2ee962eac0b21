import assert from "node:assert/strict";
import { test } from "node:test";
import {
  bitsPerParam,
  dequantize4bit,
  dequantizeAbsmax,
  dequantizeRows,
  dynamicMap,
  FP4_MAGNITUDE_THRESHOLDS,
  FP4_VALUES,
  isNested,
  NF4_THRESHOLDS,
  NF4_VALUES,
  quantize4bit,
  quantizedBytes,
  VALID_BLOCKSIZES,
  type NestedAbsmax,
  type QuantState,
} from "../src/index.ts";
import { nextUpF32, normal, rng } from "./_helpers.ts";

/** Unpack the 4-bit codes of a state (first element = high nibble). */
function codes(state: QuantState, n: number): number[] {
  return Array.from({ length: n }, (_, i) => (i & 1 ? state.packed[i >> 1] & 15 : state.packed[i >> 1] >> 4));
}

function plainAbsmax(state: QuantState): Float32Array {
  assert.ok(!isNested(state.absmax));
  return state.absmax as Float32Array;
}

/** Largest half gap between neighbouring values of a code table. */
function halfMaxGap(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  let g = 0;
  for (let i = 1; i < s.length; i++) g = Math.max(g, s[i] - s[i - 1]);
  return g / 2;
}

test("defaults are NF4 + double quantization at blocksize 64 (not bnb's fp4 default)", () => {
  const x = normal(300, 0.02, 1);
  const s = quantize4bit(x);
  assert.equal(s.quantType, "nf4");
  assert.equal(s.blocksize, 64);
  assert.ok(isNested(s.absmax));
  const a = s.absmax as NestedAbsmax;
  assert.equal(a.nestedBlocksize, 256);
  assert.deepEqual(a.nestedCode, dynamicMap());
  assert.equal(a.qabsmax.length, 5);
  assert.equal(a.nestedAbsmax.length, 1);
  assert.deepEqual(s.shape, [300]);
  assert.equal(s.dtype, "float32");
  assert.deepEqual(Array.from(s.quantMap), NF4_VALUES);
});

test("packing: the first (even) element goes in the high nibble", () => {
  const s = quantize4bit(new Float32Array([-1, 1, 0, 0.5]), { doubleQuant: false });
  assert.deepEqual(Array.from(s.packed), [0x0f, 0x7c]);
  assert.deepEqual(codes(s, 4), [0, 15, 7, 12]);
});

test("odd counts: (n+1)>>1 bytes, the pad nibble is the code of 0.0", () => {
  const nf4 = quantize4bit(new Float32Array([1, -1, 0.5]), { doubleQuant: false });
  assert.equal(nf4.packed.length, 2);
  assert.equal(nf4.packed[1], (12 << 4) | 7);
  assert.deepEqual(Array.from(dequantize4bit(nf4)), [1, -1, NF4_VALUES[12]]);
  const fp4 = quantize4bit(new Float32Array([1, -1, 0.5]), { quantType: "fp4", doubleQuant: false });
  assert.deepEqual(Array.from(fp4.packed), [0x3b, 0x50]);
  assert.deepEqual(Array.from(dequantize4bit(fp4)), [1, -1, 0.5]);
  const one = quantize4bit(new Float32Array([-3]), { doubleQuant: false });
  assert.deepEqual(Array.from(one.packed), [0x07]);
  assert.deepEqual(Array.from(dequantize4bit(one)), [-3]);
});

test("a short tail gets its own block and absmax", () => {
  const x = new Float32Array(100);
  for (let i = 0; i < 100; i++) x[i] = i < 64 ? (i - 32) / 8 : (i - 80) / 100;
  const s = quantize4bit(x, { doubleQuant: false });
  const am = plainAbsmax(s);
  assert.equal(am.length, 2);
  assert.equal(am[0], 4); // |(0-32)/8|
  assert.equal(am[1], x[99]); // 0.19 beats |x[64]| = 0.16
  assert.equal(am[1], Math.fround(0.19));
});

test("all-zero blocks: absmax 0, NF4 code 7 / FP4 code 0, dequantized to exact zeros", () => {
  const x = new Float32Array(192);
  for (let i = 64; i < 128; i++) x[i] = Math.sin(i);
  for (const quantType of ["nf4", "fp4"] as const) {
    const s = quantize4bit(x, { quantType, doubleQuant: false });
    assert.deepEqual(Array.from(plainAbsmax(s)), [0, Math.fround(Math.max(...x.slice(64, 128).map(Math.abs))), 0]);
    const zero = quantType === "nf4" ? 0x77 : 0x00;
    for (let i = 0; i < 32; i++) assert.equal(s.packed[i], zero);
    for (let i = 64; i < 96; i++) assert.equal(s.packed[i], zero);
    const y = dequantize4bit(s);
    for (let i = 0; i < 64; i++) assert.equal(y[i], 0);
    for (let i = 128; i < 192; i++) assert.equal(y[i], 0);
  }
  // With double quantization the zero blocks stay zero (code 7 is 0.0), possibly -0 when
  // the double-quantized absmax comes back slightly negative.
  const dq = dequantize4bit(quantize4bit(x));
  for (let i = 0; i < 64; i++) assert.ok(dq[i] === 0, `dq[${i}] = ${dq[i]}`);
});

test("NF4 exact ties at every threshold go to the lower code; the next float32 goes up", () => {
  for (let k = 0; k < 15; k++) {
    const t = NF4_THRESHOLDS[k];
    // The 1.0 pins absmax to 1, so the normalized value is x itself.
    const s = quantize4bit(new Float32Array([1, t, nextUpF32(t), 0]), { doubleQuant: false });
    assert.deepEqual(codes(s, 3), [15, k, k + 1], `threshold ${k} = ${t}`);
  }
});

test("NF4 picks the nearest code for random values (brute force, away from exact ties)", () => {
  const r = rng(7);
  const x = new Float32Array(4096);
  for (let i = 0; i < x.length; i++) x[i] = i % 64 === 0 ? 1 : Math.fround(r() * 2 - 1);
  const s = quantize4bit(x, { doubleQuant: false });
  const c = codes(s, x.length);
  for (let i = 0; i < x.length; i++) {
    if (NF4_THRESHOLDS.includes(x[i])) continue;
    let best = 0;
    for (let j = 1; j < 16; j++) if (Math.abs(x[i] - NF4_VALUES[j]) < Math.abs(x[i] - NF4_VALUES[best])) best = j;
    assert.equal(c[i], best, `x = ${x[i]}`);
  }
});

test("FP4 follows CUDA dQuantizeFP4: sign bit, then |x| > t with ties toward zero", () => {
  const bucketBits = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];
  for (let k = 0; k < 7; k++) {
    const t = FP4_MAGNITUDE_THRESHOLDS[k];
    const s = quantize4bit(new Float32Array([1, t, nextUpF32(t), -t, -nextUpF32(t), 0]), { quantType: "fp4", doubleQuant: false });
    assert.deepEqual(codes(s, 5), [0b0011, bucketBits[k], bucketBits[k + 1], 8 | bucketBits[k], 8 | bucketBits[k + 1]], `threshold ${k}`);
  }
  // 0.583333f sits below the true midpoint 7/12: values in between become 8/12, not 6/12.
  const quirk = Math.fround(0.5833332);
  assert.ok(quirk > FP4_MAGNITUDE_THRESHOLDS[5] && quirk < 7 / 12);
  const q = quantize4bit(new Float32Array([1, quirk]), { quantType: "fp4", doubleQuant: false });
  assert.deepEqual(codes(q, 2), [0b0011, 0b0010]);
  // Tiny negatives keep the sign bit (code 0b1000, value +0 in the table).
  const z = quantize4bit(new Float32Array([1, -1e-6]), { quantType: "fp4", doubleQuant: false });
  assert.deepEqual(codes(z, 2), [0b0011, 0b1000]);
});

test("FP4 agrees with sorted-midpoint nearest search outside the CUDA threshold quirks", () => {
  const r = rng(11);
  const x = new Float32Array(4096);
  for (let i = 0; i < x.length; i++) x[i] = i % 64 === 0 ? 1 : Math.fround(r() * 2 - 1);
  const s = quantize4bit(x, { quantType: "fp4", doubleQuant: false });
  const c = codes(s, x.length);
  const sortedIdx = [...FP4_VALUES.keys()].sort((a, b) => FP4_VALUES[a] - FP4_VALUES[b] || a - b);
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    const nearQuirk = FP4_MAGNITUDE_THRESHOLDS.some((t) => Math.abs(a - t) < 1e-6);
    if (nearQuirk) continue;
    let best = sortedIdx[0];
    for (const j of sortedIdx) if (Math.abs(x[i] - FP4_VALUES[j]) < Math.abs(x[i] - FP4_VALUES[best])) best = j;
    assert.equal(FP4_VALUES[c[i]], FP4_VALUES[best], `x = ${x[i]}`);
  }
});

test("round trip error <= half the largest code gap * block absmax (no DQ)", () => {
  for (const quantType of ["nf4", "fp4"] as const) {
    const half = halfMaxGap(quantType === "nf4" ? NF4_VALUES : FP4_VALUES);
    for (const blocksize of [32, 64, 256, 4096]) {
      const x = normal(10_000 + 17, 0.05, blocksize);
      const s = quantize4bit(x, { quantType, blocksize, doubleQuant: false });
      const am = plainAbsmax(s);
      const y = dequantize4bit(s);
      for (let i = 0; i < x.length; i++) {
        const bound = half * am[Math.floor(i / blocksize)] * (1 + 1e-6);
        assert.ok(Math.abs(y[i] - x[i]) <= bound, `${quantType} bs=${blocksize} i=${i}: |${y[i]} - ${x[i]}| > ${bound}`);
      }
    }
  }
});

test("double quantization: absmax error bounded by the dynamic map; element error adds it", () => {
  const dyn = dynamicMap();
  let dynHalfGap = 0;
  for (let i = 1; i < 256; i++) dynHalfGap = Math.max(dynHalfGap, (dyn[i] - dyn[i - 1]) / 2);
  dynHalfGap = Math.max(dynHalfGap, 1 + dyn[0]); // values in [-1, dyn[0]] map to dyn[0]
  for (const quantType of ["nf4", "fp4"] as const) {
    const half = halfMaxGap(quantType === "nf4" ? NF4_VALUES : FP4_VALUES);
    // Heteroscedastic rows so the absmax values spread out, 300 blocks -> 2 nested blocks.
    const x = normal(64 * 300 + 5, 1, 3);
    for (let i = 0; i < x.length; i++) x[i] *= 0.01 + (Math.floor(i / 640) % 7) * 0.02;
    const plain = quantize4bit(x, { quantType, doubleQuant: false });
    const dq = quantize4bit(x, { quantType });
    assert.deepEqual(dq.packed, plain.packed, "DQ must not change the 4-bit codes");
    const am = plainAbsmax(plain);
    const nested = dq.absmax as NestedAbsmax;
    assert.equal(nested.nestedAbsmax.length, 2);
    const amDq = dequantizeAbsmax(dq);
    for (let b = 0; b < am.length; b++) {
      const bound = dynHalfGap * nested.nestedAbsmax[b >> 8] + 1e-6 * am[b];
      assert.ok(Math.abs(amDq[b] - am[b]) <= bound, `block ${b}: |${amDq[b]} - ${am[b]}| > ${bound}`);
    }
    const y = dequantize4bit(dq);
    for (let i = 0; i < x.length; i++) {
      const b = Math.floor(i / 64);
      const bound = half * am[b] + Math.abs(amDq[b] - am[b]) + 1e-6 * am[b];
      assert.ok(Math.abs(y[i] - x[i]) <= bound, `${quantType} i=${i}`);
    }
  }
});

test("double quantization internals: offset is the float32 mean, codes use the dynamic map", () => {
  const x = normal(64 * 10, 1, 5);
  const plain = plainAbsmax(quantize4bit(x, { doubleQuant: false }));
  const s = quantize4bit(x);
  const nested = s.absmax as NestedAbsmax;
  let sum = 0;
  for (const v of plain) sum += v;
  assert.equal(nested.nestedOffset, Math.fround(sum / plain.length));
  let m = 0;
  for (const v of plain) m = Math.max(m, Math.abs(Math.fround(v - nested.nestedOffset)));
  assert.equal(nested.nestedAbsmax[0], m);
  const dyn = dynamicMap();
  const amDq = dequantizeAbsmax(s);
  for (let b = 0; b < plain.length; b++) {
    const expect = Math.fround(Math.fround(dyn[nested.qabsmax[b]] * nested.nestedAbsmax[0]) + nested.nestedOffset);
    assert.equal(amDq[b], expect);
  }
  // The largest |absmax - offset| maps exactly to +-1 (index 0 is -0.99296875, so +1 is exact).
  const extreme = nested.qabsmax.some((q) => q === 255 || q === 0);
  assert.ok(extreme);
});

test("dequantized values are exactly code[q] * absmax[block] in float32", () => {
  const x = normal(1000, 0.3, 9);
  const s = quantize4bit(x, { doubleQuant: false, blocksize: 128 });
  const am = plainAbsmax(s);
  const c = codes(s, x.length);
  const y = dequantize4bit(s);
  for (let i = 0; i < x.length; i++) assert.equal(y[i], Math.fround(NF4_VALUES[c[i]] * am[i >> 7]));
});

test("every bnb blocksize works; anything else is a RangeError", () => {
  const x = normal(5000, 1, 2);
  for (const blocksize of VALID_BLOCKSIZES) {
    const s = quantize4bit(x, { blocksize });
    assert.equal((s.absmax as NestedAbsmax).qabsmax.length, Math.ceil(5000 / blocksize));
  }
  for (const bad of [0, 16, 48, 65, 8192, 64.5, -64, NaN]) {
    assert.throws(
      () => quantize4bit(x, { blocksize: bad }),
      (e: unknown) => e instanceof RangeError && /blocksize must be one of 32, 64/.test(e.message),
    );
    assert.throws(() => bitsPerParam(100, { blocksize: bad }), RangeError);
  }
});

test("input errors: quantType, empty, NaN, infinity, shape mismatch, non-Float32Array", () => {
  const x = new Float32Array([1, 2, 3, 4]);
  assert.throws(() => quantize4bit(x, { quantType: "int4" as never }), /quantType must be "nf4" or "fp4"/);
  assert.throws(() => quantize4bit(new Float32Array(0)), /empty/);
  assert.throws(() => quantize4bit(new Float32Array([1, NaN])), /element 1 is NaN/);
  assert.throws(() => quantize4bit(new Float32Array([1, -Infinity])), /infinite/);
  assert.throws(() => quantize4bit(x, { shape: [3, 2] }), /shape \[3, 2\] has 6 elements but x has 4/);
  assert.throws(() => quantize4bit(x, { dtype: "float64" as never }), /dtype must be one of/);
  assert.throws(() => quantize4bit([1, 2] as never), TypeError);
});

test("dequantizeRows matches the full dequantization, with blocks spanning rows", () => {
  const rows = 7;
  const cols = 96; // 96 % 64 != 0, so blocks straddle row boundaries
  const x = normal(rows * cols, 0.1, 4);
  for (const doubleQuant of [false, true]) {
    const s = quantize4bit(x, { shape: [rows, cols], doubleQuant });
    const full = dequantize4bit(s);
    const out = new Float32Array(4 * cols + 3).fill(99);
    const part = dequantizeRows(s, 2, 6, out);
    assert.equal(part, out);
    assert.deepEqual(out.subarray(0, 4 * cols), full.subarray(2 * cols, 6 * cols));
    assert.equal(out[4 * cols], 99, "must not write past the requested rows");
    assert.deepEqual(dequantizeRows(s, 0, rows), full);
    assert.equal(dequantizeRows(s, 3, 3).length, 0);
    assert.throws(() => dequantizeRows(s, 5, 8), /row range \[5, 8\) is outside \[0, 7\)/);
    assert.throws(() => dequantizeRows(s, 0, 2, new Float32Array(10)), /out has 10 elements, needs 192/);
  }
});

test("dequantize rejects inconsistent states", () => {
  const s = quantize4bit(normal(128, 1, 1), { doubleQuant: false });
  assert.throws(() => dequantize4bit({ ...s, shape: [130] }), /packed has 64 bytes, expected 65/);
  assert.throws(() => dequantize4bit({ ...s, absmax: new Float32Array(3) }), /absmax has 3 entries, expected 2 blocks/);
  assert.throws(() => dequantize4bit({ ...s, blocksize: 100 }), RangeError);
});

test("bits per parameter: 4.127 with DQ at 64, 4.5 without, from actual bytes of a 4096x4096 weight", () => {
  const n = 4096 * 4096;
  const x = new Float32Array(n);
  const r = rng(3);
  for (let i = 0; i < n; i++) x[i] = r() - 0.5;
  const t0 = performance.now();
  const dq = quantize4bit(x, { shape: [4096, 4096] });
  const ms = performance.now() - t0;
  assert.ok(ms < 5000, `quantizing 4096x4096 took ${ms.toFixed(0)} ms`);
  const dqBits = (quantizedBytes(dq) * 8) / n;
  assert.equal(dqBits, 4 + 8 / 64 + 32 / (64 * 256));
  assert.equal(dqBits, bitsPerParam(n));
  assert.equal(dqBits.toFixed(3), "4.127");
  assert.equal(quantizedBytes(dq), n / 2 + n / 64 + (4 * n) / (64 * 256));
  const plain = quantize4bit(x, { shape: [4096, 4096], doubleQuant: false });
  assert.equal((quantizedBytes(plain) * 8) / n, 4.5);
  assert.equal(bitsPerParam(n, { doubleQuant: false }), 4.5);
  assert.ok(Math.abs(bitsPerParam(n, { blocksize: 64 }) - bitsPerParam(n, { doubleQuant: false }) + 0.373) < 1e-3, "DQ saves 0.373 bit/param");
  // Small and ragged sizes count the padding byte and partial blocks.
  assert.equal(bitsPerParam(3, { doubleQuant: false }), ((2 + 4) * 8) / 3);
  assert.equal(bitsPerParam(3), ((2 + 1 + 4) * 8) / 3);
  assert.equal(bitsPerParam(1000, { blocksize: 128 }), (quantizedBytes(quantize4bit(normal(1000, 1, 1), { blocksize: 128 })) * 8) / 1000);
  assert.throws(() => bitsPerParam(0), RangeError);
});

test("quantization is deterministic and does not mutate its input", () => {
  const x = normal(1000, 1, 8);
  const copy = x.slice();
  const a = quantize4bit(x);
  const b = quantize4bit(x);
  assert.deepEqual(x, copy);
  assert.deepEqual(a, b);
});
