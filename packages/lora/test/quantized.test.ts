/**
 * QLoRA: LoRA over nn's 4-bit QuantizedLinear (through the base-layer contract). Skips with a
 * message until @lowrank/nn exports quantizeModel.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Module } from "@lowrank/nn/node";
import * as nn from "@lowrank/nn/node";
import { crossEntropy, scope, tensor } from "@lowrank/tensor";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { getPeftModel, isQuantizedLinear, mergeAndSave, saveAdapter } from "../src/node.ts";
import { IDS, logits, maxAbsDiff, noData, randomizeAdapter, storiesHfDir, tinyModel, withTempDir } from "./helpers.ts";

type QuantizeModel = (model: Module, opts?: { blocksize?: number; skipModules?: string[] }) => Promise<{ quantized: string[] }>;
const quantizeModel = (nn as unknown as { quantizeModel?: QuantizeModel }).quantizeModel;
const skip = quantizeModel ? false : "@lowrank/nn does not export quantizeModel yet (packages/nn/src/quantize-model.ts)";

async function quantizedTiny() {
  const model = tinyModel({ hidden_size: 32, intermediate_size: 64, num_attention_heads: 4, num_key_value_heads: 2 });
  const report = await (quantizeModel as QuantizeModel)(model, { blocksize: 32 });
  return { model, report };
}

test("QLoRA: a fresh adapter over 4-bit bases leaves the logits unchanged; A and B get gradients, the 4-bit weights none", { skip }, async () => {
  const { model, report } = await quantizedTiny();
  assert.equal(report.quantized.length, 14);
  const before = logits(model);
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 4, lora_alpha: 8 }, "default", { warn: () => {} });
  assert.equal(peft.loraLayers().length, 14);
  assert.ok(peft.loraLayers().every(([, l]) => isQuantizedLinear(l.base_layer)) && peft.hasQuantizedBase);
  assert.equal(maxAbsDiff(logits(model), before), 0);
  randomizeAdapter(peft, "default", 3, 0.05);
  scope(() => {
    const out = model.forward(tensor(IDS, { dtype: "i32" }));
    return crossEntropy(out.reshape([-1, out.shape[2]]), tensor(IDS[0].slice(1).concat([0]), { dtype: "i32" }));
  }).backward();
  for (const [n, t] of model.namedParameters()) {
    if (/\.lora_[AB]\.default\.weight$/.test(n)) assert.ok(t.grad, `${n} has a gradient`);
    else assert.equal(t.grad, null, n);
  }
  // The logical 4-bit parameter count (out·in per layer) is part of "all params", as PEFT counts Params4bit.
  const linears = peft.loraLayers().reduce((s, [, l]) => s + l.inFeatures * l.outFeatures, 0);
  const dense = model.namedParameters().reduce((s, [, t]) => s + t.size, 0);
  assert.equal(peft.countParameters().all, dense + linears);
  model.dispose();
});

test("QLoRA merge = dequantize, add, requantize: the round-trip error is reported and the output stays close", { skip }, async () => {
  const { model } = await quantizedTiny();
  const peft = getPeftModel(model, { target_modules: ["q_proj", "down_proj"], r: 2, lora_alpha: 4 }, "default", { warn: () => {} });
  randomizeAdapter(peft, "default", 5, 0.05);
  const adapted = logits(model);
  const info = await peft.merge({ safe: true });
  assert.equal(info.length, 4);
  for (const i of info) assert.ok(i.requantError !== undefined && i.requantError > 0 && i.requantError < 0.5, `${i.module}: ${i.requantError}`);
  const merged = logits(model);
  const diff = maxAbsDiff(merged, adapted);
  assert.ok(diff > 0 && diff < 0.5, `4-bit merge moves the logits by ${diff} (rounding, as PEFT warns)`);
  await peft.unmerge();
  model.dispose();
});

test("QLoRA mergeAndUnload({ dequantize: true }): dense dequant(W) + ΔW layers, same logits as the adapter model", { skip }, async () => {
  const { model } = await quantizedTiny();
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 2, lora_alpha: 4 }, "default", { warn: () => {} });
  randomizeAdapter(peft, "default", 6, 0.05);
  const adapted = logits(model);
  const { merged } = await peft.mergeAndUnload({ dequantize: true });
  assert.equal(merged.length, 14);
  assert.ok(merged.every((m) => m.requantError === undefined));
  assert.ok(model.namedModules().every(([, m]) => !isQuantizedLinear(m)));
  assert.ok(maxAbsDiff(logits(model), adapted) < 1e-4);
  model.dispose();
});

test(
  "QLoRA on stories260K: a bnb-4bit directory + adapter -> mergeAndSave, requantized (4-bit) or dequantized (dense)",
  { skip: skip || noData, timeout: 120_000 },
  async (t) => {
    await withTempDir(async (dir) => {
      const prompt = [[1, 403, 407, 261, 378, 428, 269, 162]];
      const dense = await nn.loadHfModel(storiesHfDir as string);
      const denseLogits = logits(dense, prompt);
      await (quantizeModel as QuantizeModel)(dense);
      const quantDiff = maxAbsDiff(logits(dense, prompt), denseLogits); // what 4-bit rounding alone does
      const q4 = join(dir, "stories-4bit");
      await nn.saveHfModel(dense, q4);
      dense.dispose();
      const base = await nn.loadHfModel(q4);
      base.eval();
      const peft = getPeftModel(base, { target_modules: "all-linear", r: 4, lora_alpha: 8, base_model_name_or_path: "stories-4bit" }, "default", {
        warn: () => {},
      });
      assert.ok(peft.hasQuantizedBase);
      randomizeAdapter(peft, "default", 8, 0.05);
      const adapted = logits(base, prompt);
      const adapterDir = join(dir, "adapter");
      await saveAdapter(peft, adapterDir);
      base.dispose();

      const out = join(dir, "dense");
      const res = await mergeAndSave(q4, adapterDir, out, { dequantize: true });
      assert.ok(res.merged.every((m) => m.requantError === undefined));
      assert.equal(JSON.parse(await readFile(join(out, "config.json"), "utf8")).quantization_config, undefined);
      const merged = await nn.loadHfModel(out);
      const diff = maxAbsDiff(logits(merged, prompt), adapted);
      merged.dispose();
      t.diagnostic(`dequantized merge vs QLoRA model: max |logit diff| ${diff.toExponential(3)}`);
      assert.ok(diff < 1e-4, `dequantized merge differs by ${diff}`);

      const out4 = join(dir, "requantized");
      const res4 = await mergeAndSave(q4, adapterDir, out4);
      const worst = Math.max(...res4.merged.map((m) => m.requantError as number));
      assert.ok(worst > 0);
      assert.equal(JSON.parse(await readFile(join(out4, "config.json"), "utf8")).quantization_config.bnb_4bit_quant_type, "nf4");
      const merged4 = await nn.loadHfModel(out4);
      assert.ok(merged4.namedModules().some(([, m]) => isQuantizedLinear(m)));
      const diff4 = maxAbsDiff(logits(merged4, prompt), adapted);
      merged4.dispose();
      t.diagnostic(
        `requantized 4-bit merge vs QLoRA model: max |logit diff| ${diff4.toExponential(3)} (max weight requantization error ${worst.toExponential(
          3,
        )}; 4-bit vs f32 base: ${quantDiff.toExponential(3)})`,
      );
      // Requantizing rounds every weight again: the error is of the size 4-bit rounding itself causes (PEFT warns the same).
      assert.ok(diff4 > 1e-5 && diff4 < 3 * quantDiff, `requantized merge moved logits by ${diff4} (4-bit rounding alone: ${quantDiff})`);
    });
  },
);
