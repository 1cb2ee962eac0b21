// Reproduces shared/data/quant/nf4_reference.json (PROVENANCE.md section 5): codes,
// packed bytes, absmax and dequantized values, all compared exactly.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { dequantize4bit, NF4_THRESHOLDS, NF4_VALUES, quantize4bit, VALID_BLOCKSIZES } from "../src/index.ts";
import { dataDir, dataFile, hex } from "./_helpers.ts";

interface RefCase {
  name: string;
  blocksize: number;
  input: number[];
  absmax: number[];
  codes: number[];
  packed_hex: string;
  dequantized: number[];
}

interface Reference {
  codebook: number[];
  midpoint_thresholds: number[];
  cases: RefCase[];
}

const file = dataFile("quant/nf4_reference.json");
const skip = file ? false : `nf4_reference.json not found under ${dataDir()} (set LOWRANK_DATA_DIR to shared/data)`;
// bun and deno do not print skip reasons, so say it once here.
if (skip) console.warn(`skipping reference tests: ${skip}`);
const ref: Reference | undefined = file ? JSON.parse(readFileSync(file, "utf8")) : undefined;

test("reference codebook and thresholds equal ours exactly", { skip }, () => {
  assert.deepEqual(ref!.codebook, NF4_VALUES);
  assert.deepEqual(ref!.midpoint_thresholds, NF4_THRESHOLDS);
});

test("reference cases: codes, packed hex, absmax and dequantized values", { skip }, () => {
  assert.equal(ref!.cases.length, 3);
  for (const c of ref!.cases) {
    const n = c.input.length;
    // The codebook case uses blocksize 16, which bnb does not offer; it is a single block
    // (n <= 64), so blocksize 64 gives the identical single tail block.
    let blocksize = c.blocksize;
    if (!VALID_BLOCKSIZES.includes(blocksize)) {
      assert.ok(n <= 64, `${c.name}: blocksize ${blocksize} spans several blocks`);
      blocksize = 64;
    }
    const x = Float32Array.from(c.input);
    assert.deepEqual(Array.from(x), c.input, `${c.name}: inputs are float32`);
    const s = quantize4bit(x, { blocksize, doubleQuant: false });
    const codes = Array.from({ length: n }, (_, i) => (i & 1 ? s.packed[i >> 1] & 15 : s.packed[i >> 1] >> 4));
    assert.deepEqual(codes, c.codes, `${c.name}: codes`);
    assert.equal(hex(s.packed), c.packed_hex, `${c.name}: packed`);
    assert.deepEqual(Array.from(s.absmax as Float32Array), c.absmax, `${c.name}: absmax`);
    assert.deepEqual(Array.from(dequantize4bit(s)), c.dequantized, `${c.name}: dequantized`);
  }
});

test("reference case with a partial last block has its own absmax", { skip }, () => {
  const c = ref!.cases.find((k) => k.name === "uniform_with_partial_last_block")!;
  assert.equal(c.input.length % c.blocksize, 36);
  let m = 0;
  for (const v of c.input.slice(64)) m = Math.max(m, Math.abs(v));
  assert.equal(c.absmax[1], m);
});
