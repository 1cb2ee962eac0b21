/** PEFT adapter files: key names, shapes, config, round trips, subfolders, and every refusal. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Rng } from "@lowrank/tensor";
import { type LazyTensorInput, openSafetensors, toTypedArray, writeSafetensors } from "@lowrank/safetensors/node";
import { type LoraConfigInput, type PeftModel, adapterToBytes, getPeftModel, loadAdapter, loadAdapterFromBytes, saveAdapter } from "../src/node.ts";
import { logits, maxAbsDiff, noData, peftConfigPath, randomizeAdapter, snapshot, tinyModel, withTempDir } from "./helpers.ts";

const quiet = { warn: () => {} };

async function savedAdapter(dir: string, config: LoraConfigInput, name = "default"): Promise<{ peft: PeftModel; out: Float32Array }> {
  const model = tinyModel();
  const peft = getPeftModel(model, { task_type: "CAUSAL_LM", base_model_name_or_path: "tiny-llama", ...config }, name, quiet);
  randomizeAdapter(peft, name);
  const out = logits(model);
  await saveAdapter(peft, dir);
  return { peft, out };
}

test("saved keys and shapes are PEFT's: base_model.model.<path>.lora_A.weight [r, in], lora_B.weight [out, r], F32, no adapter name", async () => {
  await withTempDir(async (dir) => {
    const { peft } = await savedAdapter(dir, { target_modules: ["q_proj", "k_proj", "down_proj"], r: 2, lora_alpha: 4 });
    assert.deepEqual((await readdir(dir)).sort(), ["adapter_config.json", "adapter_model.safetensors"]);
    const f = await openSafetensors(join(dir, "adapter_model.safetensors"));
    assert.deepEqual({ ...f.metadata }, { format: "pt" });
    const expected: Record<string, number[]> = {};
    for (const i of [0, 1]) {
      expected[`base_model.model.model.layers.${i}.self_attn.q_proj.lora_A.weight`] = [2, 16];
      expected[`base_model.model.model.layers.${i}.self_attn.q_proj.lora_B.weight`] = [16, 2];
      expected[`base_model.model.model.layers.${i}.self_attn.k_proj.lora_A.weight`] = [2, 16];
      expected[`base_model.model.model.layers.${i}.self_attn.k_proj.lora_B.weight`] = [8, 2];
      expected[`base_model.model.model.layers.${i}.mlp.down_proj.lora_A.weight`] = [2, 24];
      expected[`base_model.model.model.layers.${i}.mlp.down_proj.lora_B.weight`] = [16, 2];
    }
    assert.deepEqual([...f.names].sort(), Object.keys(expected).sort());
    for (const [k, shape] of Object.entries(expected)) {
      assert.equal(f.tensors[k].dtype, "F32");
      assert.deepEqual(f.tensors[k].shape, shape, k);
    }
    const l = peft.loraLayers().find(([p]) => p === "model.layers.1.mlp.down_proj")![1];
    assert.deepEqual(toTypedArray(await f.read("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")), snapshot(l.lora_B.get("default").weight));
    await f.close();
    const cfg = JSON.parse(await readFile(join(dir, "adapter_config.json"), "utf8"));
    assert.equal(cfg.peft_type, "LORA");
    assert.equal(cfg.task_type, "CAUSAL_LM");
    assert.equal(cfg.base_model_name_or_path, "tiny-llama");
    assert.equal(cfg.r, 2);
    assert.equal(cfg.lora_alpha, 4);
    assert.deepEqual(cfg.target_modules, ["q_proj", "k_proj", "down_proj"]);
    assert.equal(cfg.inference_mode, true);
    assert.deepEqual(Object.keys(cfg), Object.keys(cfg).sort());
  });
});

const ROUND_TRIPS: [string, LoraConfigInput][] = [
  ["all-linear", { target_modules: "all-linear", r: 3, lora_alpha: 5 }],
  [
    "rank/alpha patterns + rsLoRA",
    { target_modules: ["q_proj", "up_proj"], r: 4, lora_alpha: 8, use_rslora: true, rank_pattern: { up_proj: 2 }, alpha_pattern: { "layers\\.1\\..*": 3 } },
  ],
  ["modules_to_save (lm_head saved under its plain name)", { target_modules: ["v_proj"], r: 2, modules_to_save: ["lm_head"] }],
  ["DoRA", { target_modules: ["q_proj", "o_proj"], r: 2, use_dora: true }],
];

for (const [name, config] of ROUND_TRIPS) {
  test(`save -> load round trip is exact: ${name}`, async () => {
    await withTempDir(async (dir) => {
      const { peft, out } = await savedAdapter(dir, config);
      const fresh = tinyModel();
      const loaded = await loadAdapter(fresh, dir);
      assert.deepEqual(loaded.peftConfig.get("default"), { ...peft.peftConfig.get("default"), inference_mode: true });
      assert.equal(maxAbsDiff(logits(fresh), out), 0);
      // Every adapter tensor is bit-identical, and frozen unless isTrainable.
      const a = new Map(peft.model.namedParameters());
      for (const [n, t] of fresh.namedParameters()) {
        if (!/lora_|modules_to_save/.test(n)) continue;
        assert.deepEqual(snapshot(t), snapshot(a.get(n)!), n);
        assert.equal(t.requiresGrad, false);
      }
      if (config.modules_to_save) {
        const f = await openSafetensors(join(dir, "adapter_model.safetensors"));
        assert.ok(f.has("base_model.model.lm_head.weight") && !f.names.some((k) => k.includes("modules_to_save")));
        await f.close();
      }
      if (config.use_dora) {
        const f = await openSafetensors(join(dir, "adapter_model.safetensors"));
        assert.deepEqual(f.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"].shape, [16]);
        await f.close();
      }
      const trainable = await loadAdapter(tinyModel(), dir, "default", { isTrainable: true });
      assert.ok(trainable.trainableParameters().length > 0);
      peft.model.dispose();
      fresh.dispose();
    });
  });
}

test("a non-default adapter is saved in <dir>/<name>; loading it next to another keeps both", async () => {
  await withTempDir(async (dir) => {
    const model = tinyModel();
    const peft = getPeftModel(model, { target_modules: ["q_proj"], r: 2 }, "default", quiet);
    peft.addAdapter("style", { target_modules: ["v_proj"], r: 3 });
    randomizeAdapter(peft, "default", 1);
    randomizeAdapter(peft, "style", 2);
    peft.setAdapter("style");
    const styleOut = logits(model);
    await saveAdapter(peft, dir); // every adapter
    assert.deepEqual((await readdir(dir)).sort(), ["adapter_config.json", "adapter_model.safetensors", "style"]);
    assert.deepEqual((await readdir(join(dir, "style"))).sort(), ["adapter_config.json", "adapter_model.safetensors"]);
    const fresh = tinyModel();
    const loaded = await loadAdapter(fresh, dir);
    await loadAdapter(loaded, dir, "style"); // found in the subfolder
    assert.deepEqual([...loaded.peftConfig.keys()], ["default", "style"]);
    assert.deepEqual(loaded.activeAdapters, ["default"]);
    loaded.setAdapter("style");
    assert.equal(maxAbsDiff(logits(fresh), styleOut), 0);
    model.dispose();
    fresh.dispose();
  });
});

/** Rewrite the adapter file through `edit` (names -> tensors). */
async function editWeights(dir: string, edit: (t: Map<string, LazyTensorInput>) => void): Promise<void> {
  const path = join(dir, "adapter_model.safetensors");
  const f = await openSafetensors(path);
  const tensors = new Map<string, LazyTensorInput>();
  for (const n of f.names) {
    const d = await f.read(n);
    tensors.set(n, { dtype: d.dtype, shape: [...d.shape], data: d.data.slice() });
  }
  await f.close();
  edit(tensors);
  await writeSafetensors(path, tensors, { format: "pt" });
}

async function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): Promise<void> {
  const path = join(dir, "adapter_config.json");
  const c = JSON.parse(await readFile(path, "utf8"));
  edit(c);
  await writeFile(path, JSON.stringify(c));
}

const REFUSALS: [string, (dir: string) => Promise<void>, RegExp][] = [
  [
    "a missing key",
    (d) => editWeights(d, (t) => t.delete("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")),
    /adapter does not match the model \(1 missing\):\n {2}missing: base_model\.model\.model\.layers\.1\.self_attn\.v_proj\.lora_B\.weight/,
  ],
  [
    "an unexpected key",
    (d) =>
      editWeights(d, (t) => t.set("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", { dtype: "F32", shape: [2, 16], data: new Float32Array(32) })),
    /1 unexpected\):\n {2}unexpected: base_model\.model\.model\.layers\.0\.mlp\.up_proj\.lora_A\.weight/,
  ],
  [
    "r in the config differs from the file",
    (d) => editConfig(d, (c) => (c.r = 4)),
    /shape \[2, 16\] in the file, expected \[4, 16\] \(r = 4, in_features = 16\).*|the file's rank is 2 but adapter_config\.json says r = 4/s,
  ],
  [
    "target modules differ from the file",
    (d) => editConfig(d, (c) => (c.target_modules = ["q_proj", "o_proj"])),
    /missing: base_model\.model\.model\.layers\.0\.self_attn\.o_proj\.lora_A\.weight[\s\S]*unexpected: base_model\.model\.model\.layers\.0\.self_attn\.v_proj\.lora_A\.weight/,
  ],
  [
    "target modules that match nothing in this model",
    (d) => editConfig(d, (c) => (c.target_modules = ["c_attn"])),
    /target_modules \["c_attn"\] matched no module; available Linear modules: q_proj/,
  ],
  [
    "a non-float tensor",
    (d) =>
      editWeights(d, (t) =>
        t.set("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", { dtype: "I32", shape: [2, 16], data: new Int32Array(32) }),
      ),
    /lora_A\.weight: dtype I32, expected a float tensor/,
  ],
  ["an unsupported PEFT option", (d) => editConfig(d, (c) => (c.lora_bias = true)), /unsupported PEFT options .*lora_bias = true/],
  ["another base model", async () => {}, /trained on base_model_name_or_path "tiny-llama", but the model is "\/models\/other-model"/],
];

for (const [name, corrupt, message] of REFUSALS) {
  test(`loadAdapter refuses ${name}, naming what is wrong, and leaves the model untouched`, async () => {
    await withTempDir(async (dir) => {
      await savedAdapter(dir, { target_modules: ["q_proj", "v_proj"], r: 2 });
      await corrupt(dir);
      const model = tinyModel();
      const before = logits(model);
      const names = model.namedModules().map(([n]) => n);
      const opts = name === "another base model" ? { baseModel: "/models/other-model" } : {};
      await assert.rejects(loadAdapter(model, dir, "default", opts), message);
      assert.deepEqual(
        model.namedModules().map(([n]) => n),
        names,
      );
      assert.equal(maxAbsDiff(logits(model), before), 0);
      model.dispose();
    });
  });
}

test("loadAdapter: a directory without an adapter, or with only a pickle file", async () => {
  await withTempDir(async (dir) => {
    await assert.rejects(loadAdapter(tinyModel(), dir), /adapter_config\.json: not found; .* is not a PEFT adapter directory/);
    await writeFile(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "LORA", target_modules: ["q_proj"], r: 2 }));
    await writeFile(join(dir, "adapter_model.bin"), "pickle");
    await assert.rejects(loadAdapter(tinyModel(), dir), /adapter_model\.bin \(pickle\) is not supported/);
  });
});

test("the same base model under another path is accepted (last path component, case-insensitive)", async () => {
  await withTempDir(async (dir) => {
    await savedAdapter(dir, { target_modules: ["q_proj"], r: 2 });
    const p = await loadAdapter(tinyModel(), dir, "default", { baseModel: "/somewhere/else/Tiny-Llama/" });
    assert.equal(p.peftConfig.size, 1);
  });
});

test("the real PEFT 0.18.1 adapter_config.json loads with PEFT-shaped weights (r=16, alpha=32, 7 targets)", { skip: noData }, async () => {
  await withTempDir(async (dir) => {
    const cfgText = await readFile(peftConfigPath as string, "utf8");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "adapter_config.json"), cfgText);
    // A model wide enough for r = 16 everywhere (SmolLM2's own shapes would do the same).
    const model = tinyModel({ hidden_size: 32, intermediate_size: 48, num_attention_heads: 4, num_key_value_heads: 4 });
    const rng = new Rng(3);
    const tensors = new Map<string, LazyTensorInput>();
    for (const [name, m] of model.namedModules()) {
      const proj = name.split(".").pop() as string;
      if (!["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].includes(proj)) continue;
      const { inFeatures, outFeatures } = m as unknown as { inFeatures: number; outFeatures: number };
      const mk = (shape: number[]) => ({ dtype: "F32" as const, shape, data: Float32Array.from({ length: shape[0] * shape[1] }, () => rng.normal() * 0.05) });
      tensors.set(`base_model.model.${name}.lora_A.weight`, mk([16, inFeatures]));
      tensors.set(`base_model.model.${name}.lora_B.weight`, mk([outFeatures, 16]));
    }
    await writeSafetensors(join(dir, "adapter_model.safetensors"), tensors, { format: "pt" });
    const before = logits(model);
    const peft = await loadAdapter(model, dir);
    assert.equal(peft.loraLayers().length, 14);
    for (const [, l] of peft.loraLayers()) assert.equal(l.scaling.get("default"), 2);
    assert.ok(maxAbsDiff(logits(model), before) > 1e-4);
    model.dispose();
  });
});

test("adapterToBytes / loadAdapterFromBytes: the same bytes and the same load as saveAdapter / loadAdapter", async () => {
  await withTempDir(async (dir) => {
    const { peft, out } = await savedAdapter(dir, { target_modules: "all-linear", r: 3, lora_alpha: 5, use_dora: true, modules_to_save: ["lm_head"] });
    const bytes = await adapterToBytes(peft, "default");
    assert.equal(bytes.config, await readFile(join(dir, "adapter_config.json"), "utf8"));
    assert.deepEqual(bytes.weights, new Uint8Array(await readFile(join(dir, "adapter_model.safetensors"))));
    const fromFiles = tinyModel();
    const a = await loadAdapter(fromFiles, dir);
    const fromBytes = tinyModel();
    const b = await loadAdapterFromBytes(fromBytes, bytes, "default");
    assert.deepEqual(b.peftConfig.get("default"), a.peftConfig.get("default"));
    assert.equal(maxAbsDiff(logits(fromBytes), out), 0);
    const live = new Map(fromFiles.namedParameters());
    for (const [n, t] of fromBytes.namedParameters()) {
      assert.deepEqual(snapshot(t), snapshot(live.get(n)!), n);
      assert.equal(t.requiresGrad, live.get(n)!.requiresGrad, n);
    }
    // The same checks: a file from another rank is refused with loadAdapter's message, naming the label.
    const other = await adapterToBytes(getPeftModel(tinyModel(), { target_modules: "all-linear", r: 2 }, "default", quiet), "default");
    await assert.rejects(
      loadAdapterFromBytes(tinyModel(), { config: bytes.config, weights: other.weights }, "default", { weightsLabel: "picked.safetensors" }),
      /^Error: picked\.safetensors: adapter does not match the model .*the file's rank is 2 but adapter_config\.json says r = 3/s,
    );
  });
});
