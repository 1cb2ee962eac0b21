/**
 * DoRA with rsLoRA checked against PEFT's formula by an independent computation in plain arrays.
 * PEFT (tuners/lora/dora.py, DoraLinearLayer.forward, dropout off, no bias):
 *   scaling     = lora_alpha / sqrt(r)                                   (use_rslora)
 *   weight_norm = || W + scaling * B @ A ||_2 over each output row       (detached)
 *   y           = (m / weight_norm) * (W x + scaling * B A x)
 * with m = lora_magnitude_vector (initialised to weight_norm of the untouched W, so a fresh
 * adapter is a no-op).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { tensor } from "@lowrank/tensor";
import type { Linear } from "@lowrank/nn/node";
import { getPeftModel } from "../src/node.ts";
import { randomizeAdapter, tinyModel } from "./helpers.ts";

const matvec = (w: Float32Array, rows: number, cols: number, x: number[]) =>
  Array.from({ length: rows }, (_, i) => x.reduce((s, xj, j) => s + w[i * cols + j] * xj, 0));

test("DoRA + rsLoRA forward equals PEFT's magnitude-normalised formula, computed independently", async () => {
  const model = tinyModel();
  const r = 4;
  const alpha = 6;
  const peft = getPeftModel(model, { target_modules: ["q_proj"], r, lora_alpha: alpha, use_dora: true, use_rslora: true }, "default", { warn: () => {} });
  randomizeAdapter(peft);
  model.eval();
  const [, layer] = peft.loraLayers()[0];
  const inF = layer.inFeatures;
  const outF = layer.outFeatures;
  assert.equal(layer.scaling.get("default"), alpha / Math.sqrt(r), "rsLoRA scaling alpha / sqrt(r)");
  const W = (await (layer.base_layer as Linear).weight.read()) as Float32Array; // [out, in]
  const A = (await layer.lora_A.get("default").weight.read()) as Float32Array; // [r, in]
  const B = (await layer.lora_B.get("default").weight.read()) as Float32Array; // [out, r]
  const m = (await layer.lora_magnitude_vector.get("default").weight.read()) as Float32Array; // [out]
  assert.equal(m.length, outF);

  const s = alpha / Math.sqrt(r);
  const merged = new Float32Array(outF * inF); // W + s * B @ A
  for (let i = 0; i < outF; i++) {
    for (let j = 0; j < inF; j++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += B[i * r + k] * A[k * inF + j];
      merged[i * inF + j] = W[i * inF + j] + s * ba;
    }
  }
  const norm = Array.from({ length: outF }, (_, i) => Math.hypot(...merged.subarray(i * inF, (i + 1) * inF)));
  const xs = Array.from({ length: 3 }, (_, t) => Array.from({ length: inF }, (_, j) => Math.sin(1 + t * inF + j)));
  const want = xs.flatMap((x) => matvec(merged, outF, inF, x).map((v, i) => (m[i] / norm[i]) * v));

  const x = tensor(xs.flat(), { shape: [3, inF], backend: (layer.base_layer as Linear).weight.backend });
  const y = layer.forward(x);
  const got = Array.from(await y.read());
  const worst = Math.max(...got.map((v, i) => Math.abs(v - want[i])));
  assert.ok(worst < 1e-4, `DoRA output off PEFT's formula by ${worst}`);
  // And it is not the plain LoRA output (the magnitude matters).
  const plain = xs.flatMap((x) => matvec(merged, outF, inF, x));
  assert.ok(Math.max(...plain.map((v, i) => Math.abs(v - want[i]))) > 1e-3);
  x.dispose();
  y.dispose();
  model.dispose();
});
