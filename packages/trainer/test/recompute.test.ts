/** Activation recomputation per decoder layer: same gradients, lower peak memory (numbers printed). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { loadHfModel } from "@lowrank/nn/node";
import { getPeftModel } from "@lowrank/lora/node";
import { Rng, type Tensor, recompute, tensor } from "@lowrank/tensor";
import { RecomputedLayer, batchLossSum, dropoutStreamMap, recomputeLayers } from "../src/node.ts";
import { STORIES, dataDir } from "./helpers.ts";

const data = dataDir();

test("recomputing each decoder layer keeps names and gradients, and lowers peak bytes", { skip: data ? false : "no shared data directory" }, async (t) => {
  const backend = createCpuBackend();
  const rng = new Rng(11);
  const [B, T] = [4, 128];
  const ids = Int32Array.from({ length: B * T }, () => 3 + rng.int(500));
  const labels = Int32Array.from({ length: B * T }, () => 3 + rng.int(500));
  const batch = { B, T, ids, labels, targets: B * T };
  const measure = async (again: boolean, method: "full" | "lora") => {
    const model = await loadHfModel(join(data as string, STORIES), { backend });
    if (method === "lora") getPeftModel(model, { r: 8, lora_alpha: 16, target_modules: "all-linear" }, "default", { seed: 1 });
    else model.setRequiresGrad(true);
    const names = model.namedParameters().map(([n]) => n);
    let undo = () => {};
    if (again) {
      undo = recomputeLayers(model);
      assert.ok(model.getSubmodule("model.layers.0") instanceof RecomputedLayer);
      assert.deepEqual(
        model.namedParameters().map(([n]) => n),
        names,
        "parameter names unchanged",
      );
    }
    const base = backend.memory().liveBytes;
    backend.resetPeak();
    const loss = batchLossSum(model, batch);
    loss.backward();
    const peak = backend.memory().peakBytes - base;
    const value = await loss.item();
    loss.dispose();
    const grads = model
      .namedParameters()
      .filter(([, p]) => p.grad)
      .map(([n, p]) => [n, Float32Array.from(p.grad!.readSync())] as const);
    undo();
    model.dispose();
    return { peak, value, grads };
  };
  for (const method of ["full", "lora"] as const) {
    const plain = await measure(false, method);
    const re = await measure(true, method);
    assert.equal(re.value, plain.value);
    assert.equal(re.grads.length, plain.grads.length);
    for (let k = 0; k < plain.grads.length; k++) {
      const [n, a] = plain.grads[k];
      const b = re.grads[k][1];
      for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 + 1e-4 * Math.abs(a[i]), `${n}[${i}] ${a[i]} vs ${b[i]}`);
    }
    const mib = (x: number) => (x / 2 ** 20).toFixed(1);
    t.diagnostic(
      `${method}, stories260K, B=${B} T=${T}: peak ${mib(plain.peak)} MiB without, ${mib(re.peak)} MiB with recomputation (${(
        (100 * re.peak) /
        plain.peak
      ).toFixed(0)}%)`,
    );
    assert.ok(re.peak < plain.peak * 0.75, `recomputed peak ${re.peak} vs ${plain.peak}`);
  }
  backend.dispose();
});

test(
  "tensor's recompute() replays LoRA dropout draws itself: same gradients and stream positions as without it",
  { skip: data ? false : "no shared data directory" },
  async () => {
    const backend = createCpuBackend({ threads: 0 });
    const model = await loadHfModel(join(data as string, STORIES), { backend });
    const peft = getPeftModel(model, { r: 4, lora_alpha: 8, lora_dropout: 0.3, target_modules: ["q_proj"] }, "default", { seed: 2 });
    const [, layer] = peft.loraLayers()[0];
    const stream = dropoutStreamMap(model).get("model.layers.0.self_attn.q_proj:default")!;
    const rng = new Rng(5);
    const xv = Float32Array.from({ length: 6 * layer.inFeatures }, () => rng.normal());
    const run = (wrap: (f: (h: Tensor) => Tensor, x: Tensor) => Tensor) => {
      stream.counter = 1000;
      const x = tensor(xv, { shape: [6, layer.inFeatures], backend, requiresGrad: true });
      const y = wrap((h) => layer.forward(h), x);
      // Two draws in one step (as a recomputed block followed by more dropout), then backward.
      const loss = y.mul(y).sum();
      loss.backward();
      const out = { gx: Array.from(x.grad!.readSync()), gA: Array.from(layer.lora_A.get("default").weight.grad!.readSync()), counter: stream.counter };
      for (const p of model.parameters()) p.grad?.dispose(), (p.grad = null);
      for (const t of [x, y, loss]) t.dispose();
      return out;
    };
    const plain = run((f, x) => f(x));
    const re = run((f, x) => recompute(f, x));
    assert.equal(re.counter, plain.counter, "the second forward leaves the stream where the forward left it");
    assert.ok(plain.counter > 1000);
    assert.deepEqual(re.gx, plain.gx, "input gradient: the second forward saw the forward's dropout mask");
    assert.deepEqual(re.gA, plain.gA);
    model.dispose();
    backend.dispose();
  },
);
