/** LoraConfig: PEFT's defaults and names, validation, and adapter_config.json in both directions. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { SUPPORTED_TYPES } from "@lowrank/nn/node";
import { DEFAULT_TARGET_MODULES, LoraConfigError, configFromJson, configToJson, loraConfig, loraScaling } from "../src/node.ts";
import { noData, peftConfigPath } from "./helpers.ts";

test("defaults are PEFT's (config.py)", () => {
  const c = loraConfig();
  assert.equal(c.peft_type, "LORA");
  assert.equal(c.r, 8);
  assert.equal(c.lora_alpha, 8);
  assert.equal(c.lora_dropout, 0);
  assert.equal(c.bias, "none");
  assert.equal(c.init_lora_weights, true);
  assert.equal(c.use_rslora, false);
  assert.equal(c.use_dora, false);
  assert.equal(c.fan_in_fan_out, false);
  assert.deepEqual(c.rank_pattern, {});
  assert.deepEqual(c.alpha_pattern, {});
  assert.equal(c.target_modules, null);
  assert.equal(c.modules_to_save, null);
  assert.equal(c.layers_to_transform, null);
});

test("scaling: alpha / r, or alpha / sqrt(r) with use_rslora", () => {
  assert.equal(loraScaling(16, 8, false), 2);
  assert.equal(loraScaling(16, 16, true), 4);
  assert.equal(loraScaling(8, 2, true), 8 / Math.SQRT2);
});

const invalid: [string, Record<string, unknown>, RegExp][] = [
  ["r = 0", { r: 0 }, /r = 0 must be a positive integer/],
  ["r negative", { r: -4 }, /r = -4 must be a positive integer/],
  ["r fractional", { r: 2.5 }, /r = 2.5 must be a positive integer/],
  ["unknown bias", { bias: "some" }, /bias = "some" must be "none", "all" or "lora_only"/],
  ["dropout 1", { lora_dropout: 1 }, /lora_dropout = 1 must be in \[0, 1\)/],
  ["alpha NaN", { lora_alpha: Number.NaN }, /lora_alpha = null must be a finite number/],
  ["pissa init", { init_lora_weights: "pissa" }, /init_lora_weights = "pissa" is a PEFT init mode Lowrank does not implement/],
  ["bad regex", { target_modules: "q_proj(" }, /target_modules = "q_proj\(" is not a valid regular expression/],
  ["rank_pattern value", { rank_pattern: { q_proj: 0 } }, /rank_pattern\["q_proj"\] = 0 must be a positive integer/],
  ["layers_pattern alone", { layers_pattern: "layers" }, /layers_pattern is set but layers_to_transform is not/],
  ["regex + layers", { target_modules: ".*q_proj", layers_to_transform: [0] }, /layers_to_transform cannot be used when target_modules is a regex string/],
  ["modules_to_save string", { modules_to_save: "lm_head" }, /modules_to_save = "lm_head" must be a list/],
];
for (const [name, input, message] of invalid) {
  test(`invalid config: ${name}`, () => {
    assert.throws(
      () => loraConfig(input as never),
      (e: unknown) => e instanceof LoraConfigError && message.test((e as Error).message),
    );
  });
}

test("every problem is reported at once", () => {
  assert.throws(
    () => loraConfig({ r: 0, bias: "x" as never, lora_dropout: 2 }),
    (e: Error) => /r = 0/.test(e.message) && /bias = "x"/.test(e.message) && /lora_dropout = 2/.test(e.message),
  );
});

test("the real adapter_config.json written by PEFT 0.18.1 parses; unknown keys are ignored", { skip: noData }, async () => {
  const json = JSON.parse(await readFile(peftConfigPath as string, "utf8"));
  const c = configFromJson(json, peftConfigPath as string);
  assert.equal(c.r, 16);
  assert.equal(c.lora_alpha, 32);
  assert.equal(c.lora_dropout, 0.05);
  assert.equal(c.task_type, "CAUSAL_LM");
  assert.equal(c.base_model_name_or_path, "HuggingFaceTB/SmolLM2-135M-Instruct");
  assert.deepEqual([...(c.target_modules as string[])].sort(), ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
  assert.equal(c.inference_mode, true);
  assert.equal(loraScaling(c.lora_alpha, c.r, c.use_rslora), 2);
});

test("configFromJson: peft_type is required, other PEFT types and math-changing options are refused by name", () => {
  assert.throws(() => configFromJson({ r: 8 }), /"peft_type" is missing/);
  assert.throws(() => configFromJson({ peft_type: "IA3" }), /peft_type = "IA3" is not supported/);
  assert.throws(
    () => configFromJson({ peft_type: "LORA", lora_bias: true, use_qalora: true }),
    /unsupported PEFT options .*lora_bias = true, use_qalora = true/,
  );
  assert.throws(() => configFromJson({ peft_type: "LORA", layer_replication: [[0, 2]] }), /layer_replication = \[\[0,2\]\]/);
  // Defaults of the same options are fine, and so are keys this version has never heard of.
  const c = configFromJson({
    peft_type: "LORA",
    lora_bias: false,
    use_qalora: false,
    loftq_config: {},
    megatron_core: "megatron.core",
    some_future_key: { a: 1 },
    r: 4,
  });
  assert.equal(c.r, 4);
});

test("configToJson: PEFT's keys, sorted as json.dumps(sort_keys=True), inference_mode true", () => {
  const c = loraConfig({ r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"], task_type: "CAUSAL_LM", base_model_name_or_path: "stories260K-hf" });
  const j = configToJson(c);
  const keys = Object.keys(j);
  assert.deepEqual(keys, [...keys].sort());
  for (const k of [
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "r",
    "lora_alpha",
    "target_modules",
    "lora_dropout",
    "bias",
    "use_rslora",
    "use_dora",
    "fan_in_fan_out",
    "init_lora_weights",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "revision",
    "inference_mode",
    "peft_version",
  ]) {
    assert.ok(k in j, `missing ${k}`);
  }
  assert.equal(j.peft_type, "LORA");
  assert.equal(j.inference_mode, true);
  assert.match(j.peft_version as string, /^\d+\.\d+\.\d+\+lowrank$/);
  // Round trip.
  assert.deepEqual(configFromJson(JSON.parse(JSON.stringify(j))), { ...c, inference_mode: true });
});

test("every model type nn builds has PEFT's default target modules (a LoRA without target_modules works on each)", () => {
  const missing = SUPPORTED_TYPES.filter((t) => !DEFAULT_TARGET_MODULES[t]);
  assert.deepEqual(missing, []);
  for (const t of SUPPORTED_TYPES) assert.deepEqual(DEFAULT_TARGET_MODULES[t], ["q_proj", "v_proj"]);
});
