import assert from "node:assert/strict";
import { test } from "node:test";
import { codebook, createDynamicMap, dynamicMap, FP4_MAGNITUDE_THRESHOLDS, FP4_VALUES, midpoints, NF4_THRESHOLDS, NF4_VALUES } from "../src/index.ts";

test("NF4 table: 16 published float32 values, sorted, 7 negative / zero / 8 positive", () => {
  assert.equal(NF4_VALUES.length, 16);
  for (const v of NF4_VALUES) assert.equal(Math.fround(v), v, `${v} is not a float32`);
  for (let i = 1; i < 16; i++) assert.ok(NF4_VALUES[i] > NF4_VALUES[i - 1]);
  assert.equal(NF4_VALUES[0], -1);
  assert.equal(NF4_VALUES[7], 0);
  assert.equal(NF4_VALUES[15], 1);
  // Code 1 is the published value, not scipy's regenerated -0.6961930.
  assert.equal(NF4_VALUES[1], -0.6961928009986877);
  assert.equal(NF4_VALUES[8], 0.07958029955625534);
  assert.deepEqual(Array.from(codebook("nf4")), NF4_VALUES);
});

test("NF4 thresholds are the float32 values of CUDA dQuantizeNF4's literals", () => {
  // The double literals of the decision tree in csrc/kernels.cu, in ascending order.
  const cuda = [
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984, -0.13791173323988914, -0.045525018125772476,
    0.03979014977812767, 0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482,
    0.8614784181118011,
  ];
  assert.deepEqual(NF4_THRESHOLDS, cuda.map(Math.fround));
  // They are the float32 midpoints of neighbouring codes.
  assert.deepEqual(Array.from(midpoints(codebook("nf4"))), NF4_THRESHOLDS);
});

test("FP4 table: bnb E2M1 bias-2 values by bit pattern, normalized by 12", () => {
  const raw = [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3];
  assert.deepEqual(
    FP4_VALUES,
    raw.map((v) => Math.fround(v / 12)),
  );
  assert.deepEqual(Array.from(codebook("fp4")), FP4_VALUES);
  assert.equal(FP4_VALUES[0b0011], 1);
  assert.equal(FP4_VALUES[0b1011], -1);
  assert.equal(FP4_VALUES[0b0101], 0.5);
  assert.equal(FP4_VALUES[0b0010], Math.fround(2 / 3));
  assert.equal(FP4_VALUES[0b0001], Math.fround(0.0625 / 12));
  // bnb writes `-0` (a Python int), so the serialized code 0b1000 is +0.0.
  assert.ok(Object.is(FP4_VALUES[0b1000], 0));
  for (let c = 8; c < 16; c++) assert.ok(Object.is(FP4_VALUES[c], c === 8 ? 0 : -FP4_VALUES[c - 8]));
});

test("FP4 magnitude thresholds are CUDA's literals; all but two are float32 midpoints", () => {
  const sortedMagnitudes = [0, 0.0625, 2, 3, 4, 6, 8, 12].map((v) => Math.fround(v / 12));
  const mids = Array.from(midpoints(Float32Array.from(sortedMagnitudes)));
  const same = FP4_MAGNITUDE_THRESHOLDS.map((t, i) => t === mids[i]);
  assert.deepEqual(same, [false, true, false, false, true, false, false]);
  // Each differs by a few float32 ulps at most; 0.583333f is the largest deviation.
  for (let i = 0; i < 7; i++) assert.ok(Math.abs(FP4_MAGNITUDE_THRESHOLDS[i] - mids[i]) < 4e-7, `threshold ${i}`);
  assert.equal(FP4_MAGNITUDE_THRESHOLDS[5], Math.fround(0.583333));
});

test("codebook rejects unknown types", () => {
  assert.throws(() => codebook("int4" as never), RangeError);
});

test("dynamic map: 256 sorted float32 values, 127 negative, one zero, 128 positive", () => {
  const m = dynamicMap();
  assert.equal(m.length, 256);
  for (let i = 1; i < 256; i++) assert.ok(m[i] > m[i - 1], `not strictly increasing at ${i}`);
  assert.equal(m.filter((v) => v < 0).length, 127);
  assert.equal(m.filter((v) => v === 0).length, 1);
  assert.equal(m.filter((v) => v > 0).length, 128);
  assert.equal(m[127], 0);
  assert.equal(m[0], Math.fround(-0.99296875));
  assert.equal(m[255], 1);
  // Smallest magnitudes: 1e-6 * 0.55 and 1e-6 * 3.25, computed in float32.
  assert.ok(Math.abs(m[128] - 5.5e-7) < 1e-13, `${m[128]}`);
  assert.ok(Math.abs(m[129] - 3.25e-6) < 1e-12, `${m[129]}`);
  assert.equal(m[126], -m[128]);
  // Symmetric apart from the extra 1.0.
  for (let i = 0; i < 127; i++) assert.equal(m[i], -m[254 - i]);
});

test("dynamic map reproduces torch's float32 linspace (spot values captured from torch)", () => {
  const m = dynamicMap();
  // Entries where a float64 numpy linspace or a non-FMA float32 linspace differs by 1 ulp.
  assert.equal(m[1], -0.9789062738418579);
  assert.equal(m[20], -0.7117187976837158);
  assert.equal(m[25], -0.6414062976837158);
  assert.equal(m[36], -0.48671871423721313);
  assert.equal(m[80], -0.053593751043081284);
  assert.equal(m[64], -0.09859374910593033);
  assert.equal(m[116], -0.000493750034365803);
  assert.equal(m[117], -0.0003812500217463821);
});

test("dynamicMap returns a fresh copy", () => {
  const a = dynamicMap();
  a[0] = 42;
  assert.equal(dynamicMap()[0], Math.fround(-0.99296875));
});

test("createDynamicMap: unsigned variant has 256 non-negative sorted values", () => {
  const u = createDynamicMap(false);
  assert.equal(u.length, 256);
  assert.equal(u[0], 0);
  assert.equal(u[255], 1);
  for (let i = 1; i < 256; i++) assert.ok(u[i] >= u[i - 1]);
  assert.deepEqual(createDynamicMap(true, 7, 8), dynamicMap());
});
