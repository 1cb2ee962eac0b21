/** Host SVD (QR + one-sided Jacobi) and addWeightedAdapter: linear, cat and svd combinations. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng } from "@lowrank/tensor";
import { addWeightedAdapter, getPeftModel, matmulMat, qrThin, svd, svdOfProduct, transposeMat, weightedDelta } from "../src/node.ts";
import { logits, maxAbsDiff, randomizeAdapter, snapshot, tinyModel } from "./helpers.ts";

const quiet = { warn: () => {} };

function randMat(rows: number, cols: number, seed: number): Float64Array {
  const rng = new Rng(seed);
  return Float64Array.from({ length: rows * cols }, () => rng.normal());
}

function reconstruct(d: { u: Float64Array; s: Float64Array; v: Float64Array; m: number; n: number; k: number }): Float64Array {
  const us = Float64Array.from(d.u, (x, i) => x * d.s[i % d.k]);
  return matmulMat(us, transposeMat(d.v, d.n, d.k), d.m, d.k, d.n);
}

function maxOffIdentity(q: Float64Array, rows: number, cols: number): number {
  const g = matmulMat(transposeMat(q, rows, cols), q, cols, rows, cols);
  let m = 0;
  for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) m = Math.max(m, Math.abs(g[i * cols + j] - (i === j ? 1 : 0)));
  return m;
}

test("svd: U S Vᵀ reproduces the matrix, U and V orthonormal, s descending (tall and wide)", () => {
  for (const [m, n] of [
    [9, 5],
    [4, 7],
    [6, 6],
  ]) {
    const a = randMat(m, n, m * 10 + n);
    const d = svd(a, m, n);
    assert.equal(d.k, Math.min(m, n));
    assert.ok(maxAbsDiff(reconstruct(d), a) < 1e-12, `reconstruction ${m}x${n}`);
    assert.ok(maxOffIdentity(d.u, m, d.k) < 1e-12 && maxOffIdentity(d.v, n, d.k) < 1e-12);
    for (let i = 1; i < d.k; i++) assert.ok(d.s[i] <= d.s[i - 1]);
  }
});

test("svd: singular values of a known matrix; rank deficiency gives zeros", () => {
  // diag(3, 2) rotated: singular values 3 and 2.
  const c = Math.cos(0.3);
  const s = Math.sin(0.3);
  const a = Float64Array.from([3 * c, -2 * s, 3 * s, 2 * c]);
  const d = svd(a, 2, 2);
  assert.ok(Math.abs(d.s[0] - 3) < 1e-14 && Math.abs(d.s[1] - 2) < 1e-14);
  const low = matmulMat(randMat(6, 2, 1), randMat(2, 5, 2), 6, 2, 5); // rank 2
  const dl = svd(low, 6, 5);
  assert.ok(dl.s[2] < 1e-12 * dl.s[0] && dl.s[1] > 1e-3);
});

test("qrThin: Q orthonormal, R upper triangular, QR = A (also rank-deficient)", () => {
  const a = randMat(8, 3, 5);
  a[2] = a[0] * 2; // no effect on rank, just values
  for (const m of [a, matmulMat(randMat(8, 1, 6), randMat(1, 3, 7), 8, 1, 3)]) {
    const { q, r } = qrThin(m, 8, 3);
    assert.ok(maxAbsDiff(matmulMat(q, r, 8, 3, 3), m) < 1e-12);
    assert.ok(maxOffIdentity(q, 8, 3) < 1e-12);
    for (let i = 0; i < 3; i++) for (let j = 0; j < i; j++) assert.equal(r[i * 3 + j], 0);
  }
});

test("svdOfProduct: the SVD of B·A without forming it matches the direct SVD", () => {
  const b = randMat(40, 6, 11);
  const a = randMat(6, 30, 12);
  const direct = svd(matmulMat(b, a, 40, 6, 30), 40, 30);
  const fast = svdOfProduct(b, a, 40, 6, 30);
  for (let i = 0; i < 6; i++) assert.ok(Math.abs(direct.s[i] - fast.s[i]) < 1e-10 * direct.s[0]);
  assert.ok(maxAbsDiff(reconstruct(fast), matmulMat(b, a, 40, 6, 30)) < 1e-11);
});

async function twoAdapters(rb = 2) {
  const model = tinyModel();
  const peft = getPeftModel(model, { target_modules: ["q_proj", "up_proj"], r: 2, lora_alpha: 4 }, "a", quiet);
  peft.addAdapter("b", { target_modules: ["q_proj", "up_proj"], r: rb, lora_alpha: 3 });
  randomizeAdapter(peft, "a", 1);
  randomizeAdapter(peft, "b", 2);
  return { model, peft };
}

test("svd combination of an exactly rank-r sum reproduces it (rank = r_a + r_b)", async () => {
  const { model, peft } = await twoAdapters();
  const w = [0.7, -1.3];
  await addWeightedAdapter(peft, ["a", "b"], w, "ab", "svd", { svdRank: 4 });
  const cfg = peft.peftConfig.get("ab")!;
  assert.equal(cfg.r, 4);
  assert.equal(cfg.lora_alpha, 4);
  assert.equal(cfg.use_rslora, false);
  for (const [path, l] of peft.loraLayers()) {
    const expected = await weightedDelta(l, ["a", "b"], w);
    const got = snapshot(l.deltaWeight("ab"));
    assert.ok(maxAbsDiff(got, expected) < 1e-5, `${path}: ${maxAbsDiff(got, expected)}`);
  }
  model.dispose();
});

test("svd combination truncated below the rank is the best rank-k fit (Eckart-Young)", async () => {
  const { model, peft } = await twoAdapters();
  await addWeightedAdapter(peft, ["a", "b"], [1, 1], "ab2", "svd"); // default rank: max(r) = 2
  const [, l] = peft.loraLayers()[0];
  const target = await weightedDelta(l, ["a", "b"], [1, 1]);
  const got = snapshot(l.deltaWeight("ab2"));
  const err = Math.sqrt(got.reduce((s, v, i) => s + (v - target[i]) ** 2, 0));
  const sv = svd(target, l.outFeatures, l.inFeatures).s;
  const bound = Math.sqrt(sv.slice(2).reduce((s, v) => s + v * v, 0));
  assert.ok(Math.abs(err - bound) < 1e-4 * Math.max(1, bound), `error ${err} vs optimum ${bound}`);
  model.dispose();
});

test("cat combination is exact with rank r_a + r_b; linear of one adapter is w·ΔW (negative w too)", async () => {
  const { model, peft } = await twoAdapters(3);
  await addWeightedAdapter(peft, ["a", "b"], [0.5, 2], "cat", "cat");
  await addWeightedAdapter(peft, ["a"], [-0.75], "neg", "linear");
  assert.equal(peft.peftConfig.get("cat")!.r, 5);
  for (const [, l] of peft.loraLayers()) {
    assert.ok(maxAbsDiff(snapshot(l.deltaWeight("cat")), await weightedDelta(l, ["a", "b"], [0.5, 2])) < 1e-5);
    assert.ok(maxAbsDiff(snapshot(l.deltaWeight("neg")), await weightedDelta(l, ["a"], [-0.75])) < 1e-6);
  }
  // The combined adapter runs like any other.
  peft.setAdapter("cat");
  const viaCat = logits(model);
  peft.setAdapter(["a", "b"]);
  peft.loraLayers().forEach(([, l]) => {
    l.scaling.set("a", (l.scaling.get("a") as number) * 0.5);
    l.scaling.set("b", (l.scaling.get("b") as number) * 2);
  });
  assert.ok(maxAbsDiff(logits(model), viaCat) < 1e-4);
  model.dispose();
});

test("linear combination follows PEFT: A = Σ sign·√|w s|·A, B = Σ √|w s|·B (equal ranks required)", async () => {
  const { model, peft } = await twoAdapters();
  await addWeightedAdapter(peft, ["a", "b"], [0.3, 0.6], "lin", "linear");
  const [, l] = peft.loraLayers()[0];
  const sa = Math.sqrt(0.3 * (l.scaling.get("a") as number));
  const sb = Math.sqrt(0.6 * (l.scaling.get("b") as number));
  const A = snapshot(l.lora_A.get("a").weight).map((v, i) => sa * v + sb * snapshot(l.lora_A.get("b").weight)[i]);
  assert.ok(maxAbsDiff(snapshot(l.lora_A.get("lin").weight), A) < 1e-6);
  await assert.rejects(addWeightedAdapter(peft, ["a", "b"], [1, 1], "lin", "linear"), /adapter 'lin' already exists/);
  const { peft: p2, model: m2 } = await twoAdapters(3);
  await assert.rejects(
    addWeightedAdapter(p2, ["a", "b"], [1, 1], "x", "linear"),
    /"linear" needs equal ranks, but at model\.layers\.0\.self_attn\.q_proj adapters a, b have r = 2, 3/,
  );
  await assert.rejects(addWeightedAdapter(p2, ["a", "zzz"], [1, 1], "x"), /no adapter 'zzz'/);
  await assert.rejects(addWeightedAdapter(p2, ["a"], [1, 2], "x"), /1 adapters but 2 weights/);
  model.dispose();
  m2.dispose();
});
