/**
 * Acceptance on the real stories260K-hf checkpoint: an adapter saved by Lowrank has exactly
 * PEFT's keys and shapes, and applying it INDEPENDENTLY (safetensors files read directly,
 * W + (alpha/r)·B·A in f64 on the host, a fresh model built from those weights) reproduces the
 * LoRA model's logits; mergeAndSave's output loaded as a plain model does too.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { type Tensor, tensor } from "@lowrank/tensor";
import { openSafetensors, toTypedArray } from "@lowrank/safetensors/node";
import { LlamaForCausalLM, loadHfModel, parseLlamaConfig } from "@lowrank/nn/node";
import { getPeftModel, mergeAndSave, saveAdapter } from "../src/node.ts";
import { logits, maxAbsDiff, noData, randomizeAdapter, storiesHfDir, withTempDir } from "./helpers.ts";

const skip = noData;
const PROMPT = [[1, 403, 407, 261, 378, 428, 269, 162, 263, 295, 30]];
const R = 4;
const ALPHA = 12;

test("stories260K: PEFT key names/shapes, and an independent f64 application reproduces the LoRA logits (< 1e-4)", { skip, timeout: 120_000 }, async (t) => {
  await withTempDir(async (dir) => {
    const model = await loadHfModel(storiesHfDir as string);
    model.eval();
    const peft = getPeftModel(
      model,
      { target_modules: "all-linear", r: R, lora_alpha: ALPHA, task_type: "CAUSAL_LM", base_model_name_or_path: "stories260K-hf" },
      "default",
      { warn: () => {} },
    );
    randomizeAdapter(peft, "default", 42, 0.05); // A and B random and non-zero: a "trained" adapter
    const loraLogits = logits(model, PROMPT);
    const baseLogits = peft.withAdaptersDisabled(() => logits(model, PROMPT));
    assert.ok(maxAbsDiff(loraLogits, baseLogits) > 1e-2, "the adapter changes the logits");
    await saveAdapter(peft, dir);

    // ---- from here on, only the files: nothing from @lowrank/lora.
    const cfg = JSON.parse(await readFile(join(dir, "adapter_config.json"), "utf8"));
    assert.equal(cfg.peft_type, "LORA");
    const scaling = cfg.lora_alpha / cfg.r;
    assert.equal(scaling, ALPHA / R);
    const hfConfig = parseLlamaConfig(JSON.parse(await readFile(join(storiesHfDir as string, "config.json"), "utf8")));
    const base = await openSafetensors(join(storiesHfDir as string, "model.safetensors"));
    const adapter = await openSafetensors(join(dir, "adapter_model.safetensors"));
    const expectedKeys: string[] = [];
    const dims: Record<string, [number, number]> = {
      "self_attn.q_proj": [64, 64],
      "self_attn.k_proj": [64, 32],
      "self_attn.v_proj": [64, 32],
      "self_attn.o_proj": [64, 64],
      "mlp.gate_proj": [64, 172],
      "mlp.up_proj": [64, 172],
      "mlp.down_proj": [172, 64],
    };
    for (let i = 0; i < 5; i++) {
      for (const [p, [inF, outF]] of Object.entries(dims)) {
        const a = `base_model.model.model.layers.${i}.${p}.lora_A.weight`;
        const b = `base_model.model.model.layers.${i}.${p}.lora_B.weight`;
        expectedKeys.push(a, b);
        assert.deepEqual(adapter.tensors[a]?.shape, [R, inF], a);
        assert.deepEqual(adapter.tensors[b]?.shape, [outF, R], b);
        assert.equal(adapter.tensors[a].dtype, "F32");
        assert.equal(adapter.tensors[b].dtype, "F32");
      }
    }
    assert.deepEqual([...adapter.names].sort(), expectedKeys.sort(), "exactly PEFT's keys, nothing else");

    const state = new Map<string, Tensor>();
    let maxDelta = 0;
    for (const name of base.names) {
      const w = Float64Array.from(toTypedArray(await base.read(name)) as Float32Array);
      const key = `base_model.model.${name.replace(/\.weight$/, "")}`;
      if (adapter.has(`${key}.lora_A.weight`)) {
        const A = toTypedArray(await adapter.read(`${key}.lora_A.weight`)) as Float32Array; // [r, in]
        const B = toTypedArray(await adapter.read(`${key}.lora_B.weight`)) as Float32Array; // [out, r]
        const [out, inF] = base.tensors[name].shape;
        for (let o = 0; o < out; o++) {
          for (let j = 0; j < inF; j++) {
            let acc = 0;
            for (let k = 0; k < R; k++) acc += B[o * R + k] * A[k * inF + j];
            w[o * inF + j] += scaling * acc;
            maxDelta = Math.max(maxDelta, Math.abs(scaling * acc));
          }
        }
      }
      state.set(name, tensor(Float32Array.from(w), { shape: base.tensors[name].shape }));
    }
    await base.close();
    await adapter.close();
    assert.ok(maxDelta > 1e-3);
    const rebuilt = new LlamaForCausalLM(hfConfig);
    rebuilt.loadStateDict(state);
    const independent = logits(rebuilt, PROMPT);
    const diff = maxAbsDiff(independent, loraLogits);
    t.diagnostic(
      `max |logit diff| independent f64 application vs Lowrank LoRA: ${diff.toExponential(3)} (adapter moved logits by up to ${maxAbsDiff(
        loraLogits,
        baseLogits,
      ).toFixed(3)})`,
    );
    assert.ok(diff < 1e-4, `independent application differs by ${diff}`);
    rebuilt.dispose();

    // mergeAndSave (what `lowrank merge` runs) gives a plain HF directory with the same logits.
    const out = join(dir, "merged");
    const res = await mergeAndSave(storiesHfDir as string, dir, out);
    assert.equal(res.merged.length, 35);
    assert.deepEqual(res.files.sort(), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    const plain = await loadHfModel(out);
    const mergedDiff = maxAbsDiff(logits(plain, PROMPT), loraLogits);
    t.diagnostic(`max |logit diff| merged HF directory vs Lowrank LoRA: ${mergedDiff.toExponential(3)}`);
    assert.ok(mergedDiff < 1e-4, `merged model differs by ${mergedDiff}`);
    const srcCfg = JSON.parse(await readFile(join(storiesHfDir as string, "config.json"), "utf8"));
    assert.deepEqual(JSON.parse(await readFile(join(out, "config.json"), "utf8")), srcCfg);
    plain.dispose();
    model.dispose();
  });
});

test(
  "stories260K with modules_to_save: ['lm_head'] (tied to the embeddings): merged directory unties them and reproduces the logits",
  { skip, timeout: 120_000 },
  async (t) => {
    await withTempDir(async (dir) => {
      const model = await loadHfModel(storiesHfDir as string);
      model.eval();
      const peft = getPeftModel(
        model,
        { target_modules: ["q_proj", "v_proj"], r: 2, lora_alpha: 4, modules_to_save: ["lm_head"], base_model_name_or_path: "stories260K-hf" },
        "default",
        { warn: () => {} },
      );
      randomizeAdapter(peft, "default", 3, 0.05);
      const head = model.getSubmodule("lm_head.modules_to_save.default") as unknown as { weight: Tensor };
      const bumped = head.weight.add(0.01);
      head.weight.assign(bumped); // a "trained" head, now different from the embeddings
      bumped.dispose();
      const expected = logits(model, PROMPT);
      await saveAdapter(peft, join(dir, "adapter"));
      const f = await openSafetensors(join(dir, "adapter", "adapter_model.safetensors"));
      assert.deepEqual(f.tensors["base_model.model.lm_head.weight"]?.shape, [512, 64]);
      await f.close();
      await mergeAndSave(storiesHfDir as string, join(dir, "adapter"), join(dir, "merged"));
      assert.equal(JSON.parse(await readFile(join(dir, "merged", "config.json"), "utf8")).tie_word_embeddings, false);
      const plain = await loadHfModel(join(dir, "merged"));
      const diff = maxAbsDiff(logits(plain, PROMPT), expected);
      t.diagnostic(`max |logit diff| merged (untied head) vs adapter model: ${diff.toExponential(3)}`);
      assert.ok(diff < 1e-4);
      plain.dispose();
      model.dispose();
    });
  },
);
