/** --lora-config and the LoRA flags: PEFT's LoraConfig fields into the trainer, mistakes named by field and file. */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { resolveConfig } from "@lowrank/trainer/node";
import { FINETUNE_OPTIONS, FinetuneUsageError, loraFields } from "../src/finetune.ts";

const dir = mkdtempSync(join(tmpdir(), "lowrank-lora-config-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const values = (args: string[]) => parseArgs({ args, options: FINETUNE_OPTIONS, allowPositionals: true }).values;

test("--lora-config reads a PEFT adapter_config.json; the flags override its fields; the trainer gets rank and alpha from it", () => {
  // Keys as PEFT 0.18 writes them, including descriptive ones the trainer ignores.
  const file = join(dir, "adapter_config.json");
  writeFileSync(
    file,
    JSON.stringify({
      peft_type: "LORA",
      peft_version: "0.18.1",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: "x",
      auto_mapping: null,
      inference_mode: true,
      r: 16,
      lora_alpha: 32,
      lora_dropout: 0.1,
      target_modules: ["q_proj", "v_proj"],
      use_dora: false,
      use_rslora: true,
      bias: "none",
      modules_to_save: null,
      rank_pattern: { down_proj: 4 },
      alpha_pattern: {},
      lora_bias: false,
      layer_replication: null,
      megatron_config: null,
    }),
  );
  const fields = loraFields(
    values(["--lora-config", file, "--use-dora", "--modules-to-save", "lm_head", "--layers-to-transform", "0,2", "--rank-pattern", '{"q_proj":8}']),
  )!;
  assert.equal(fields.use_dora, true, "flag overrides the file");
  assert.deepEqual(fields.modules_to_save, ["lm_head"]);
  assert.deepEqual(fields.layers_to_transform, [0, 2]);
  assert.deepEqual(fields.rank_pattern, { q_proj: 8 });
  const cfg = resolveConfig({ model: "m", data: "d", output: "o", lora: fields });
  assert.deepEqual([cfg.rank, cfg.alpha, cfg.dropout, cfg.targetModules], [16, 32, 0.1, ["q_proj", "v_proj"]]);
  assert.equal(cfg.lora.use_rslora, true);
  assert.equal("r" in cfg.lora, false);
  assert.throws(() => resolveConfig({ model: "m", data: "d", output: "o", rank: 8, lora: fields }), /lora config r = 16 contradicts rank 8/);
});

test("--lora-config: an unknown field, a bad value or an unsupported option is a usage error naming the file and the field", () => {
  const file = join(dir, "bad.json");
  writeFileSync(file, JSON.stringify({ r: 8, lora_alpah: 16 }));
  assert.throws(
    () => loraFields(values(["--lora-config", file])),
    (e: Error) => e instanceof FinetuneUsageError && e.message.includes(file) && /unknown field "lora_alpah"/.test(e.message),
  );
  writeFileSync(file, JSON.stringify({ use_dora: "yes" }));
  assert.throws(() => loraFields(values(["--lora-config", file])), /use_dora = "yes" must be true or false/);
  writeFileSync(file, JSON.stringify({ use_qalora: true }));
  assert.throws(() => loraFields(values(["--lora-config", file])), /unsupported PEFT options.*use_qalora = true/);
  writeFileSync(file, "{ not json");
  assert.throws(() => loraFields(values(["--lora-config", file])), /bad\.json: not valid JSON/);
  assert.throws(() => loraFields(values(["--lora-config", join(dir, "missing.json")])), /missing\.json: no such file/);
  assert.throws(() => loraFields(values(["--lora-bias", "maybe"])), /bias = "maybe" must be "none", "all" or "lora_only"/);
  assert.throws(() => loraFields(values(["--layers-to-transform", "0,x"])), /"x" is not a layer index/);
  assert.throws(() => loraFields(values(["--rank-pattern", "{q_proj: 8}"])), /--rank-pattern .*not valid JSON/);
  assert.equal(loraFields(values([])), undefined);
});
