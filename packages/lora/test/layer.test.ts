/** LoraLinear and PeftModel on small random models: forward, merge/unmerge, gradients, adapters, DoRA, 4-bit bases. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type Tensor, crossEntropy, noGrad, scope, tensor } from "@lowrank/tensor";
import { Linear, Module } from "@lowrank/nn/node";
import { LoraLinear, PeftModel, type QuantizedLinearLike, getPeftModel, withAdaptersDisabled } from "../src/node.ts";
import { LlamaForCausalLM, randomInit } from "@lowrank/nn/node";
import { Rng } from "@lowrank/tensor";
import { IDS, logits, maxAbsDiff, randomizeAdapter, snapshot, tinyConfig, tinyModel } from "./helpers.ts";

const quiet = { warn: () => {} };
const ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

function lossOf(model: { forward(ids: Tensor): Tensor }): Tensor {
  return scope(() => {
    const out = model.forward(tensor(IDS, { dtype: "i32" })); // (1, T, V)
    const V = out.shape[2];
    const targets = tensor(IDS[0].slice(1).concat([0]), { dtype: "i32" });
    return crossEntropy(out.reshape([-1, V]), targets);
  });
}

for (const init of [true, "gaussian"] as const) {
  test(`a fresh adapter (init_lora_weights=${init}) leaves the logits exactly unchanged`, () => {
    const model = tinyModel();
    const before = logits(model);
    const peft = getPeftModel(model, { target_modules: "all-linear", r: 4, lora_alpha: 8, init_lora_weights: init }, "default", quiet);
    assert.equal(peft.loraLayers().length, 14);
    assert.equal(maxAbsDiff(logits(model), before), 0);
    model.dispose();
  });
}

test("init modes: kaiming-uniform A within 1/sqrt(in), gaussian A with std 1/r, false gives non-zero B", async () => {
  const model = tinyModel({ hidden_size: 64, intermediate_size: 64, num_attention_heads: 4, num_key_value_heads: 4 });
  const peft = getPeftModel(model, { target_modules: ["q_proj"], r: 16, init_lora_weights: true }, "kaiming", quiet);
  peft.addAdapter("gauss", { target_modules: ["q_proj"], r: 16, init_lora_weights: "gaussian" });
  peft.addAdapter("random", { target_modules: ["q_proj"], r: 16, init_lora_weights: false });
  const l = peft.loraLayers()[0][1];
  const a = snapshot(l.lora_A.get("kaiming").weight);
  const bound = 1 / Math.sqrt(64);
  assert.ok(a.every((v) => Math.abs(v) <= bound) && Math.max(...a.map(Math.abs)) > 0.9 * bound);
  assert.ok(snapshot(l.lora_B.get("kaiming").weight).every((v) => v === 0));
  const g = snapshot(l.lora_A.get("gauss").weight);
  const std = Math.sqrt(g.reduce((s, v) => s + v * v, 0) / g.length);
  assert.ok(Math.abs(std - 1 / 16) < 0.01, `gaussian std ${std}`);
  assert.ok(snapshot(l.lora_B.get("random").weight).some((v) => v !== 0));
  model.dispose();
});

test("merge then unmerge restores the weights; merged forward equals unmerged forward", async () => {
  const model = tinyModel();
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 4, lora_alpha: 16 }, "default", quiet);
  randomizeAdapter(peft);
  const base = Object.fromEntries(peft.loraLayers().map(([p, l]) => [p, snapshot((l.base_layer as Linear).weight)]));
  const unmerged = logits(model);
  const info = await peft.merge();
  assert.equal(info.length, 14);
  const merged = logits(model);
  assert.ok(maxAbsDiff(merged, unmerged) < 1e-4, `merged vs unmerged ${maxAbsDiff(merged, unmerged)}`);
  await peft.unmerge();
  for (const [p, l] of peft.loraLayers()) assert.ok(maxAbsDiff(snapshot((l.base_layer as Linear).weight), base[p]) < 1e-6, p);
  assert.ok(maxAbsDiff(logits(model), unmerged) < 1e-5);
  model.dispose();
});

test("gradients reach lora_A and lora_B (and modules_to_save) only", () => {
  const model = tinyModel();
  const peft = getPeftModel(model, { target_modules: ["q_proj", "v_proj", "down_proj"], r: 2, modules_to_save: ["lm_head"] }, "default", quiet);
  randomizeAdapter(peft);
  lossOf(model).backward();
  const names = model.namedParameters().map(([n]) => n);
  assert.ok(names.includes("lm_head.modules_to_save.default.weight") && names.includes("lm_head.original_module.weight"));
  for (const [n, t] of model.namedParameters()) {
    const trains = /\.lora_[AB]\.default\.weight$/.test(n) || n === "lm_head.modules_to_save.default.weight";
    assert.equal(t.requiresGrad, trains, `requiresGrad of ${n}`);
    if (trains) {
      assert.ok(t.grad, `${n} has a gradient`);
      assert.ok(
        (t.grad.readSync() as Float32Array).some((v) => v !== 0),
        `${n} gradient is non-zero`,
      );
    } else assert.equal(t.grad, null, `${n} must get no gradient`);
  }
  model.dispose();
});

for (const bias of ["none", "all", "lora_only"] as const) {
  test(`bias = "${bias}": which biases train`, () => {
    const model = tinyModel({ model_type: "qwen2" }); // q/k/v have biases
    const peft = getPeftModel(model, { target_modules: ["q_proj", "o_proj"], r: 2, bias }, "default", quiet);
    const trainingBiases = peft
      .namedTrainableParameters()
      .map(([n]) => n)
      .filter((n) => n.endsWith("bias"))
      .sort();
    const expected = {
      none: [],
      all: [
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.0.self_attn.q_proj.base_layer.bias",
        "model.layers.0.self_attn.v_proj.bias",
        "model.layers.1.self_attn.k_proj.bias",
        "model.layers.1.self_attn.q_proj.base_layer.bias",
        "model.layers.1.self_attn.v_proj.bias",
      ],
      lora_only: ["model.layers.0.self_attn.q_proj.base_layer.bias", "model.layers.1.self_attn.q_proj.base_layer.bias"],
    }[bias];
    assert.deepEqual(trainingBiases, expected);
    model.dispose();
  });
}

test("use_rslora: scaling = alpha/sqrt(r), and the forward adds scaling·B·A·x", () => {
  const lin = new Linear(6, 5, {
    init: (shape) =>
      tensor(
        Float32Array.from({ length: shape[0] * shape[1] }, (_, i) => Math.sin(i)),
        { shape },
      ),
  });
  const layer = new LoraLinear(lin, "lin");
  layer.addAdapter("rs", { r: 4, alpha: 8, dropout: 0, useRslora: true, useDora: false, init: false, seed: 3 });
  layer.addAdapter("plain", { r: 4, alpha: 8, dropout: 0, useRslora: false, useDora: false, init: false, seed: 3 });
  assert.equal(layer.scaling.get("rs"), 4);
  assert.equal(layer.scaling.get("plain"), 2);
  const x = tensor([[0.5, -1, 2, 0.25, 1.5, -0.75]]);
  for (const name of ["rs", "plain"]) {
    layer.setAdapter(name);
    const y = noGrad(() => layer.forward(x)).readSync() as Float32Array;
    const W = snapshot(lin.weight);
    const A = snapshot(layer.lora_A.get(name).weight);
    const B = snapshot(layer.lora_B.get(name).weight);
    const s = layer.scaling.get(name) as number;
    const xv = [0.5, -1, 2, 0.25, 1.5, -0.75];
    const ax = Array.from({ length: 4 }, (_, k) => xv.reduce((acc, v, i) => acc + A[k * 6 + i] * v, 0));
    for (let o = 0; o < 5; o++) {
      const base = xv.reduce((acc, v, i) => acc + W[o * 6 + i] * v, 0);
      const lora = ax.reduce((acc, v, k) => acc + B[o * 4 + k] * v, 0);
      assert.ok(Math.abs(y[o] - (base + s * lora)) < 1e-5, `${name} out ${o}`);
    }
  }
});

test("dropout: counter-based and reproducible; off in eval mode", () => {
  const run = (steps: number) => {
    const model = tinyModel();
    const peft = getPeftModel(model, { target_modules: ["q_proj", "v_proj"], r: 4, lora_dropout: 0.5 }, "default", { ...quiet, seed: 11 });
    randomizeAdapter(peft);
    model.train();
    const outs = Array.from({ length: steps }, () => logits(model));
    model.eval();
    const evalOut = logits(model);
    const noDrop = withAdaptersDisabled(peft, () => logits(model));
    model.dispose();
    return { outs, evalOut, noDrop };
  };
  const a = run(2);
  const b = run(2);
  assert.equal(maxAbsDiff(a.outs[0], b.outs[0]), 0, "same seed and step: same masks");
  assert.equal(maxAbsDiff(a.outs[1], b.outs[1]), 0);
  assert.ok(maxAbsDiff(a.outs[0], a.outs[1]) > 1e-4, "the counter moves on: new masks each step");
  assert.ok(maxAbsDiff(a.evalOut, a.outs[0]) > 1e-4 && maxAbsDiff(a.evalOut, a.noDrop) > 1e-4);
});

test("several adapters: setAdapter switches, a list adds them up, deleteAdapter removes one", () => {
  const model = tinyModel();
  const base = logits(model);
  const peft = getPeftModel(model, { target_modules: ["q_proj", "up_proj"], r: 2 }, "a", quiet);
  peft.addAdapter("b", { target_modules: ["q_proj", "v_proj"], r: 3, lora_alpha: 6 });
  randomizeAdapter(peft, "a", 1);
  randomizeAdapter(peft, "b", 2);
  assert.deepEqual(peft.activeAdapters, ["a"]);
  // The new adapter is added frozen; only the active one trains.
  assert.ok(peft.namedTrainableParameters().every(([n]) => n.includes(".a.")));
  const outA = logits(model);
  peft.setAdapter("b");
  assert.ok(peft.namedTrainableParameters().every(([n]) => n.includes(".b.")));
  const outB = logits(model);
  peft.setAdapter(["a", "b"]);
  const outAB = logits(model);
  // Attention makes the logits non-additive, so compare against a sum at one layer instead.
  const q = peft.loraLayers().find(([p]) => p === "model.layers.0.self_attn.q_proj")![1];
  const x = tensor([[0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1, -1.1, 1.2, 0.13, -0.14, 0.15, 0.16]]);
  const ys = (names: string[]) => {
    q.setActiveAdapters(names);
    return noGrad(() => q.forward(x)).readSync() as Float32Array;
  };
  const [y0, ya, yb, yab] = [ys([]), ys(["a"]), ys(["b"]), ys(["a", "b"])];
  assert.ok(
    maxAbsDiff(
      yab,
      y0.map((v, i) => v + (ya[i] - v) + (yb[i] - v)),
    ) < 1e-5,
  );
  q.setActiveAdapters(["a", "b"]);
  assert.ok(maxAbsDiff(outA, base) > 1e-3 && maxAbsDiff(outB, base) > 1e-3 && maxAbsDiff(outAB, outA) > 1e-3);
  peft.deleteAdapter("b");
  assert.deepEqual([...peft.peftConfig.keys()], ["a"]);
  assert.deepEqual(peft.activeAdapters, ["a"]);
  assert.ok(!model.namedParameters().some(([n]) => n.includes(".b.")));
  assert.equal(maxAbsDiff(logits(model), outA), 0);
  assert.throws(() => peft.setAdapter("b"), /no adapter 'b' \(adapters: a\)/);
  model.dispose();
});

test("withAdaptersDisabled runs the base model (sync and async), then restores", async () => {
  const model = tinyModel();
  const base = logits(model);
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 2, modules_to_save: ["lm_head"] }, "default", quiet);
  randomizeAdapter(peft);
  const adapted = logits(model);
  assert.ok(maxAbsDiff(adapted, base) > 1e-3);
  assert.equal(
    maxAbsDiff(
      withAdaptersDisabled(peft, () => logits(model)),
      base,
    ),
    0,
  );
  assert.equal(maxAbsDiff(await peft.withAdaptersDisabled(async () => logits(model)), base), 0);
  assert.equal(maxAbsDiff(logits(model), adapted), 0);
  assert.throws(
    () =>
      withAdaptersDisabled(peft, () => {
        throw new Error("boom");
      }),
    /boom/,
  );
  assert.equal(maxAbsDiff(logits(model), adapted), 0, "restored after a throw");
  await peft.merge();
  assert.throws(() => withAdaptersDisabled(peft, () => 0), /unmerge\(\) before running the base model alone/);
  model.dispose();
});

test("merge({ safe: true }) rejects non-finite results, names the module, and changes nothing", async () => {
  const model = tinyModel();
  const peft = getPeftModel(model, { target_modules: ["q_proj", "v_proj"], r: 2 }, "default", quiet);
  randomizeAdapter(peft);
  const before = logits(model);
  const bad = peft.loraLayers().find(([p]) => p === "model.layers.1.self_attn.v_proj")![1];
  const B = bad.lora_B.get("default").weight;
  const poisoned = tensor(
    Float32Array.from(snapshot(B), (v, i) => (i === 3 ? Number.POSITIVE_INFINITY : v)),
    { shape: B.shape },
  );
  B.assign(poisoned);
  poisoned.dispose();
  const weights = peft.loraLayers().map(([, l]) => snapshot((l.base_layer as Linear).weight));
  await assert.rejects(peft.merge({ safe: true }), /model\.layers\.1\.self_attn\.v_proj: merging adapter 'default' gives NaN or Inf/);
  peft.loraLayers().forEach(([p, l], i) => {
    assert.equal(l.merged, false, p);
    assert.equal(maxAbsDiff(snapshot((l.base_layer as Linear).weight), weights[i]), 0, `${p} unchanged`);
  });
  assert.ok(Number.isFinite(before[0]));
  model.dispose();
});

test("mergeAndUnload gives the plain model back with HF names and the adapter folded in", async () => {
  const model = tinyModel();
  const names = [...model.stateDict().keys()];
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 3, lora_alpha: 6, modules_to_save: ["lm_head"] }, "default", quiet);
  randomizeAdapter(peft);
  const adapted = logits(model);
  const { model: plain } = await peft.mergeAndUnload();
  assert.equal(plain, model);
  assert.deepEqual([...plain.stateDict().keys()], names);
  assert.ok(!plain.namedModules().some(([, m]) => m instanceof LoraLinear));
  assert.ok(maxAbsDiff(logits(plain), adapted) < 1e-4);
  assert.equal(peft.peftConfig.size, 0);
  model.dispose();
});

test("DoRA: a fresh adapter is a no-op; merged forward equals unmerged; unmerge restores", async () => {
  const model = tinyModel();
  const base = logits(model);
  const peft = getPeftModel(model, { target_modules: ["q_proj", "down_proj"], r: 2, lora_alpha: 4, use_dora: true }, "default", quiet);
  assert.ok(maxAbsDiff(logits(model), base) < 1e-5, "fresh DoRA");
  const names = model.namedParameters().map(([n]) => n);
  assert.ok(names.includes("model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight"));
  randomizeAdapter(peft);
  const l0 = peft.loraLayers()[0][1];
  const w0 = snapshot((l0.base_layer as Linear).weight);
  const adapted = logits(model);
  assert.ok(maxAbsDiff(adapted, base) > 1e-3);
  await peft.merge();
  assert.ok(maxAbsDiff(logits(model), adapted) < 1e-4, `DoRA merged ${maxAbsDiff(logits(model), adapted)}`);
  await peft.unmerge();
  assert.ok(maxAbsDiff(snapshot((l0.base_layer as Linear).weight), w0) < 1e-5);
  // The magnitude trains with A and B.
  lossOf(model).backward();
  assert.ok(peft.namedTrainableParameters().some(([n, t]) => n.endsWith("lora_magnitude_vector.default.weight") && t.grad !== null));
  model.dispose();
});

/**
 * A stand-in for nn's 4-bit QuantizedLinear, coded against the same contract: the weight is
 * stored rounded to a grid of 1/8 (a crude quantizer), dequantize() gives it back, requantize()
 * rounds a new dense weight.
 */
class GridLinear extends Module implements QuantizedLinearLike {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly bias = null;
  codes: Tensor;
  constructor(w: Tensor) {
    super();
    [this.outFeatures, this.inFeatures] = w.shape;
    this.codes = this.registerBuffer("codes", GridLinear.round(w));
  }
  static round(w: Tensor): Tensor {
    return tensor(
      Float32Array.from(w.readSync() as Float32Array, (v) => Math.round(v * 8) / 8),
      { shape: w.shape },
    );
  }
  dequantize(): Tensor {
    return this.codes.add(0);
  }
  requantize(w: Tensor): void {
    this.codes = this.registerBuffer("codes", GridLinear.round(w));
  }
  forward(x: Tensor): Tensor {
    return scope(() => x.matmul(this.codes.T));
  }
}

test("a quantized base (the QuantizedLinear contract): forward, merge = dequantize + add + requantize with the error reported", async () => {
  const w = tensor(
    Float32Array.from({ length: 12 * 10 }, (_, i) => Math.cos(i)),
    { shape: [12, 10] },
  );
  const q = new GridLinear(w);
  const layer = new LoraLinear(q, "q");
  layer.addAdapter("default", { r: 3, alpha: 6, dropout: 0, useRslora: false, useDora: false, init: false, seed: 5 });
  layer.setAdapter("default");
  const x = tensor(
    Float32Array.from({ length: 2 * 10 }, (_, i) => Math.sin(i)),
    { shape: [2, 10] },
  );
  const y = snapshot(noGrad(() => layer.forward(x)));
  const [info] = await layer.merge();
  assert.equal(info.module, "q");
  assert.ok(info.requantError !== undefined && info.requantError > 0 && info.requantError <= 1 / 16 + 1e-6, `requant error ${info.requantError}`);
  const ym = snapshot(noGrad(() => layer.forward(x)));
  assert.ok(maxAbsDiff(ym, y) < 10 * (1 / 16), "merged 4-bit output is close (within the quantization error)");
  await layer.unmerge();
  const back = snapshot(q.dequantize());
  assert.ok(maxAbsDiff(back, snapshot(GridLinear.round(w))) <= 1 / 8 + 1e-6);
  assert.ok(new PeftModel(layer).hasQuantizedBase);
});

test("mergeAndUnload with a modules_to_save copy of a tied lm_head keeps the embeddings alive", async () => {
  const model = tinyModel({ tie_word_embeddings: true });
  const peft = getPeftModel(model, { target_modules: ["q_proj"], r: 2, modules_to_save: ["lm_head"] }, "default", quiet);
  randomizeAdapter(peft);
  const adapted = logits(model);
  await peft.mergeAndUnload();
  assert.ok(!model.model.embed_tokens.weight.disposed);
  assert.notEqual((model.lm_head as unknown as Linear).weight, model.model.embed_tokens.weight);
  assert.ok(maxAbsDiff(logits(model), adapted) < 1e-5);
  model.dispose();
});

for (const dtype of ["bf16", "f16"] as const) {
  test(`${dtype} base (mixed precision): LoRA and DoRA train f32 adapters, and their output stays close to the f32 model's`, () => {
    for (const use_dora of [false, true]) {
      const run = (d: "f32" | typeof dtype) => {
        const model = new LlamaForCausalLM(tinyConfig(), { dtype: d, init: randomInit(new Rng(3), 0.3) });
        const peft = getPeftModel(model, { target_modules: ["q_proj", "v_proj", "down_proj"], r: 2, lora_dropout: 0.1, use_dora }, "default", quiet);
        randomizeAdapter(peft);
        const out = logits(model);
        lossOf({ forward: (ids) => model.forward(ids).cast("f32") }).backward();
        const grads = peft.namedTrainableParameters().map(([n, p]) => [n, p.dtype, p.grad?.dtype] as const);
        model.dispose();
        return { out, grads };
      };
      const ref = run("f32"),
        half = run(dtype);
      for (const [n, pd, gd] of half.grads) assert.deepEqual([pd, gd], ["f32", "f32"], `${n}: adapter and gradient in f32 (use_dora ${use_dora})`);
      const scale = Math.max(...Array.from(ref.out, Math.abs));
      assert.ok(maxAbsDiff(half.out, ref.out) < 0.05 * scale, `use_dora ${use_dora}: logits off by ${maxAbsDiff(half.out, ref.out)} (scale ${scale})`);
    }
  });
}
