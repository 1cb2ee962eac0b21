/** Gradient checkpointing per decoder layer: same gradients, lower peak memory (numbers printed). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { loadHfModel } from "@lowrank/nn/node";
import { getPeftModel } from "@lowrank/lora/node";
import { Rng } from "@lowrank/tensor";
import { CheckpointedLayer, batchLossSum, enableGradientCheckpointing } from "../src/node.ts";
import { STORIES, dataDir } from "./helpers.ts";

const data = dataDir();

test("checkpointing each decoder layer keeps names and gradients, and lowers peak bytes", { skip: data ? false : "no shared data directory" }, async (t) => {
  const backend = createCpuBackend();
  const rng = new Rng(11);
  const [B, T] = [4, 128];
  const ids = Int32Array.from({ length: B * T }, () => 3 + rng.int(500));
  const labels = Int32Array.from({ length: B * T }, () => 3 + rng.int(500));
  const batch = { B, T, ids, labels, targets: B * T };
  const measure = async (ckpt: boolean, method: "full" | "lora") => {
    const model = await loadHfModel(join(data as string, STORIES), { backend });
    if (method === "lora") getPeftModel(model, { r: 8, lora_alpha: 16, target_modules: "all-linear" }, "default", { seed: 1 });
    else model.setRequiresGrad(true);
    const names = model.namedParameters().map(([n]) => n);
    let undo = () => {};
    if (ckpt) {
      undo = enableGradientCheckpointing(model);
      assert.ok(model.getSubmodule("model.layers.0") instanceof CheckpointedLayer);
      assert.deepEqual(model.namedParameters().map(([n]) => n), names, "parameter names unchanged");
    }
    const base = backend.memory().liveBytes;
    backend.resetPeak();
    const loss = batchLossSum(model, batch);
    loss.backward();
    const peak = backend.memory().peakBytes - base;
    const value = await loss.item();
    loss.dispose();
    const grads = model.namedParameters().filter(([, p]) => p.grad).map(([n, p]) => [n, Float32Array.from(p.grad!.readSync())] as const);
    undo();
    model.dispose();
    return { peak, value, grads };
  };
  for (const method of ["full", "lora"] as const) {
    const plain = await measure(false, method);
    const ck = await measure(true, method);
    assert.equal(ck.value, plain.value);
    assert.equal(ck.grads.length, plain.grads.length);
    for (let k = 0; k < plain.grads.length; k++) {
      const [n, a] = plain.grads[k];
      const b = ck.grads[k][1];
      for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 + 1e-4 * Math.abs(a[i]), `${n}[${i}] ${a[i]} vs ${b[i]}`);
    }
    const mib = (x: number) => (x / 2 ** 20).toFixed(1);
    t.diagnostic(`${method}, stories260K, B=${B} T=${T}: peak ${mib(plain.peak)} MiB without, ${mib(ck.peak)} MiB with checkpointing (${((100 * ck.peak) / plain.peak).toFixed(0)}%)`);
    assert.ok(ck.peak < plain.peak * 0.75, `checkpointed peak ${ck.peak} vs ${plain.peak}`);
  }
  backend.dispose();
});
