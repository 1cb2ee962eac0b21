/**
 * `lowrank bench models --quick` end to end (the real configs shrunk: bf16 shards written, loaded,
 * 3 LoRA and 3 QLoRA steps, peak vs plan, the PEFT adapter check, generation), the expected PEFT
 * keys and target_modules at full size, the checker catching a wrong adapter, and REPORT.md's section.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { serializeSafetensors } from "@lowrank/safetensors/node";
import { benchCommand } from "../src/cli.ts";
import { PLAN_PRESETS, paramsOf, planShapeFor } from "@lowrank/trainer";
import {
  ALL_LINEAR,
  type ModelsResult,
  REAL_MODELS,
  checkAdapter,
  checkModelsSchema,
  expectedAdapterKeys,
  expectedTargetModules,
  hfTensorList,
  quickModelConfig,
  readModelConfig,
} from "../src/real-models.ts";
import { writeReport } from "../src/report.ts";
import { dataDir, noData } from "./helpers.ts";

const config = (name: string) => readModelConfig(join(dataDir as string, "configs", `${name}.json`));
const count = (c: Record<string, unknown>) => hfTensorList(c).reduce((a, [, s]) => a + s.reduce((x, y) => x * y, 1), 0);

test(
  "bench models --quick: every model loads from bf16 shards, trains LoRA and QLoRA, saves PEFT's keys, generates; peak within 10% of the plan",
  { skip: noData, timeout: 120_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "lowrank-models-test-"));
    try {
      const out = join(dir, "models-quick.json");
      const t0 = performance.now();
      const rc = await benchCommand(["models", "--quick", "--out", out, "--data-dir", dataDir as string], {}, "lowrank bench models --quick");
      const seconds = (performance.now() - t0) / 1000;
      assert.equal(rc, 0, "the quick run should exit 0");
      assert.ok(seconds < 60, `the quick run took ${seconds.toFixed(0)} s; expected a few seconds`);
      const r = JSON.parse(readFileSync(out, "utf8")) as ModelsResult;
      assert.deepEqual(checkModelsSchema(r), []);
      assert.deepEqual(
        r.models.map((m) => m.name),
        REAL_MODELS.map((m) => m.name),
      );
      assert.deepEqual(
        r.models.map((m) => m.model_type),
        ["llama", "qwen2", "llama"],
      );
      for (const m of r.models) {
        assert.ok(
          m.checkpoint.shards >= 2 && m.checkpoint.files.includes("model.safetensors.index.json"),
          `${m.name}: expected a sharded bf16 checkpoint, got ${m.checkpoint.files.join(", ")}`,
        );
        for (const x of m.runs) {
          const id = `${m.name} ${x.method}`;
          assert.equal(x.status, "ok", `${id}: ${x.error}`);
          assert.ok(Math.abs((x.peak_vs_plan as number) - 1) <= 0.1, `${id}: peak ${x.peak_bytes} vs plan ${x.plan_bytes}`);
          assert.equal(x.recompute, x.method === "qlora");
          // 2 layers x 7 linears = 14 < 20: PEFT keeps the full module names.
          assert.deepEqual([...(x.adapter?.target_modules ?? [])].sort(), expectedTargetModules(quickModelConfig(config(m.name))).sort());
          assert.equal(x.adapter?.keys, 2 * 2 * ALL_LINEAR.length);
          assert.equal(x.generate?.ids.length, r.config.generateTokens);
          assert.ok(x.losses?.every(Number.isFinite));
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test("the real configs: published parameter counts, plan presets with the same shape, PEFT's target_modules and keys", { skip: noData }, () => {
  // Published sizes (tied heads counted once): 134.5M, 494.0M (with the q/k/v biases), 1.236B.
  const published: Record<string, number> = { "SmolLM2-135M": 134.5e6, "Qwen2.5-0.5B": 494.0e6, "Llama-3.2-1B": 1.236e9 };
  for (const m of REAL_MODELS) {
    const c = config(m.name);
    const n = count(c);
    assert.ok(Math.abs(n / published[m.name] - 1) < 0.002, `${m.name}: ${n} params`);
    const preset = PLAN_PRESETS.find((p) => p.name === m.name);
    assert.ok(preset, `@lowrank/trainer's PLAN_PRESETS should have ${m.name}`);
    assert.ok(Math.abs(paramsOf(preset) / n - 1) < 1e-4, `${m.name}: preset ${paramsOf(preset)} vs config ${n}`);
    assert.match(planShapeFor(n).how, new RegExp(`^${m.name.replace(".", "\\.")} `));
    assert.deepEqual(expectedTargetModules(c), [...ALL_LINEAR], `${m.name}: 7 x ${c.num_hidden_layers} linears minimize to the suffixes`);
    const keys = expectedAdapterKeys(c, ALL_LINEAR, 8);
    assert.equal(keys.size, 2 * 7 * (c.num_hidden_layers as number));
    assert.ok(keys.has("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  }
  const llama = expectedAdapterKeys(config("Llama-3.2-1B"), ALL_LINEAR, 8);
  assert.deepEqual(llama.get("base_model.model.model.layers.15.self_attn.k_proj.lora_B.weight"), [512, 8]);
  assert.deepEqual(llama.get("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"), [8, 8192]);
});

test("the adapter check names what differs from PEFT's file", { skip: noData }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "lowrank-models-adapter-"));
  try {
    const c = quickModelConfig(config("SmolLM2-135M"));
    const keys = expectedAdapterKeys(c, ALL_LINEAR, 8);
    const tensors = new Map<string, { dtype: "F32"; shape: number[]; data: Float32Array }>();
    for (const [k, shape] of keys)
      if (!k.includes("layers.1.mlp.up_proj")) tensors.set(k, { dtype: "F32", shape, data: new Float32Array(shape[0] * shape[1]) });
    tensors.set("base_model.model.lm_head.lora_A.weight", { dtype: "F32", shape: [8, 72], data: new Float32Array(576) });
    writeFileSync(join(dir, "adapter_model.safetensors"), serializeSafetensors(tensors, { format: "pt" }));
    writeFileSync(
      join(dir, "adapter_config.json"),
      JSON.stringify({ peft_type: "LORA", task_type: "CAUSAL_LM", r: 8, target_modules: ["q_proj", "v_proj"], made_up: 1 }),
    );
    const ref = JSON.parse(readFileSync(join(dataDir as string, "peft/smollm2-135m-recallclear/adapter_config.json"), "utf8")) as Record<string, unknown>;
    const a = await checkAdapter(dir, c, 8, ref);
    assert.equal(a.ok, false);
    const all = [...a.key_problems, ...a.target_problems].join("\n");
    assert.match(all, /missing base_model\.model\.model\.layers\.1\.mlp\.up_proj\.lora_A\.weight/);
    assert.match(all, /unexpected base_model\.model\.lm_head\.lora_A\.weight/);
    assert.match(all, /target_modules = \["q_proj","v_proj"\], expected the set \["model\.layers\.0\.mlp\.down_proj"/);
    assert.match(all, /keys PEFT 0\.18\.1 does not write: made_up/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("REPORT.md gets the models table from the newest models file, quick runs ignored", () => {
  const dir = mkdtempSync(join(tmpdir(), "lowrank-models-report-"));
  try {
    const run = (method: "lora" | "qlora", peak: number) => ({
      method,
      status: "ok",
      load_s: 12.5,
      prepare_s: method === "qlora" ? 30 : 0.2,
      step_seconds: [20, 15, 16],
      step_s: 15.5,
      losses: [12, 12, 12],
      trainable: 5_636_096,
      recompute: method === "qlora",
      peak_bytes: peak,
      plan_bytes: 2 ** 30,
      peak_vs_plan: peak / 2 ** 30,
      adapter: {
        files: [],
        bytes: 1,
        keys: 224,
        expected_keys: 224,
        key_problems: [],
        target_modules: [...ALL_LINEAR],
        target_problems: [],
        unknown_config_keys: [],
        ok: true,
      },
      generate: { prompt: [1], ids: [5, 6], seconds: 1, tokens_per_s: 2 },
    });
    const r = {
      suite: "models",
      schema: 1,
      wall_seconds: 600,
      config: {
        quick: false,
        batch: 1,
        seq: 64,
        rank: 8,
        alpha: 16,
        targets: "all-linear",
        dropout: 0.05,
        lr: 1e-4,
        steps: 3,
        generateTokens: 8,
        shards: 3,
        seed: 0,
        command: "lowrank bench models",
        date: "2026-12-03",
        machine: { cpu: "x", cores: 2, memoryGiB: 23, runtime: "node 20", loadavg1: 1 },
        data_dir: "/d",
        peft_reference: null,
      },
      models: [
        {
          name: "Llama-3.2-1B",
          source: "s",
          config_file: "configs/Llama-3.2-1B.json",
          model_type: "llama",
          params: 1_235_814_400,
          shape: { vocab: 128256, dim: 2048, layers: 16, heads: 32, kvHeads: 8, hidden: 8192, tied: true, head_dim: 64 },
          checkpoint: { dtype: "BF16", files: [], shards: 4, bytes: 2_471_628_800, write_s: 20, where: "tmp" },
          plan_notes: [],
          runs: [run("lora", 1.02 * 2 ** 30), { method: "qlora", status: "failed", error: "out of memory" }],
        },
      ],
    };
    writeFileSync(join(dir, "models-2001-01-01.json"), JSON.stringify(r));
    writeFileSync(join(dir, "models-quick-2099-01-01.json"), JSON.stringify({ ...r, models: [] }));
    const md = readFileSync(writeReport(dir), "utf8");
    assert.match(md, /## 8\. Real model shapes/);
    assert.match(
      md,
      /\| Llama-3\.2-1B \(llama\) \| 1235\.8M \| 2357\.1 MiB, 4 shards \| lora \| 12\.5 \| 0\.2 \| 15\.50 \| 1044\.5 \| 1024\.0 \| \*\*1\.020\*\* \| PEFT's \(224\) \| 2\.0 \|/,
    );
    assert.match(md, /\| qlora \| - \| - \| - \| - \| - \| - \| \*\*failed\*\*: out of memory \| - \|/);
    assert.match(md, /`lowrank plan --params 1\.24e9 --method qlora --rank 8 --seq-len 64 --batch-size 1`/);
    assert.doesNotMatch(md, /NaN|undefined/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
