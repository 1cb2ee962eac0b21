/**
 * docs/scale-out.md's adapter rules, checked against adapters written the way Lowrank writes them
 * (lora's getPeftModel + saveAdapter, as `lowrank finetune`, the trainer and the server's jobs do):
 * every rule in the doc's `json lowrank-adapter-rules` block is applied to every adapter, and the
 * expected verdict per engine must hold.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { getPeftModel, saveAdapter } from "@lowrank/lora/node";
import { loadHfModel } from "@lowrank/nn/node";
import { openSafetensors } from "@lowrank/safetensors/node";
import { NEED_MODEL, STORIES, tempDir } from "./helpers.ts";

const DOC = fileURLToPath(new URL("../../../docs/scale-out.md", import.meta.url));

interface EngineRules {
  required: string[];
  equals?: Record<string, unknown>;
  maxRank?: number;
  allowedMaxRanks?: number[];
  rejects?: Record<string, unknown>;
  bias?: string[];
  modulesToSave?: string[];
  dtypes?: string[];
  keyPattern?: string;
}
type Rules = Record<"peft" | "vllm" | "lorax" | "tgi", EngineRules> & { targetModules: Record<string, string[]> };

async function loadRules(): Promise<Rules> {
  const text = await readFile(DOC, "utf8");
  const m = /```json lowrank-adapter-rules\n([\s\S]*?)```/.exec(text);
  assert.ok(m, "docs/scale-out.md has a ```json lowrank-adapter-rules block");
  return JSON.parse(m[1]) as Rules;
}

/** Every rule an adapter breaks for one engine, as readable reasons. */
export function violations(config: Record<string, unknown>, tensors: Record<string, { dtype: string }>, rules: EngineRules, family: string[]): string[] {
  const out: string[] = [];
  for (const f of rules.required) if (config[f] === undefined || config[f] === null) out.push(`${f} is required`);
  for (const [f, v] of Object.entries(rules.equals ?? {})) if (config[f] !== v) out.push(`${f} must be ${JSON.stringify(v)}`);
  for (const [f, v] of Object.entries(rules.rejects ?? {})) if (config[f] === v) out.push(`${f} = ${JSON.stringify(v)} is not supported`);
  const ranks = [Number(config.r), ...Object.values((config.rank_pattern as Record<string, number>) ?? {})];
  if (rules.maxRank !== undefined && Math.max(...ranks) > rules.maxRank)
    out.push(`r = ${Math.max(...ranks)} is above the default max_lora_rank ${rules.maxRank}`);
  if (rules.allowedMaxRanks && Math.max(...ranks) > Math.max(...rules.allowedMaxRanks))
    out.push(`r = ${Math.max(...ranks)} is above every allowed max_lora_rank`);
  if (rules.bias && !rules.bias.includes(String(config.bias ?? "none"))) out.push(`bias = ${JSON.stringify(config.bias)} is not supported`);
  const mts = (config.modules_to_save as string[] | null) ?? [];
  if (rules.modulesToSave) for (const m of mts) if (!rules.modulesToSave.includes(m)) out.push(`modules_to_save ${m} is not supported`);
  const targets = config.target_modules;
  if (typeof targets === "string") out.push(`target_modules is a pattern (${targets}); engines want the list`);
  else if (Array.isArray(targets)) for (const t of targets) if (!family.includes(t)) out.push(`target module ${t} is not one of ${family.join(", ")}`);
  const re = rules.keyPattern ? new RegExp(rules.keyPattern) : null;
  for (const [k, t] of Object.entries(tensors)) {
    if (rules.dtypes && !rules.dtypes.includes(t.dtype)) out.push(`${k}: dtype ${t.dtype}`);
    if (re && !re.test(k)) out.push(`${k}: not a PEFT LoRA key`);
  }
  return out;
}

describe("docs/scale-out.md adapter rules", { skip: NEED_MODEL }, () => {
  let work: string;
  let rules: Rules;
  const CASES = [
    {
      name: "server-default",
      opts: { r: 8, lora_alpha: 16, target_modules: ["q_proj", "v_proj"] },
      expect: { peft: true, vllm: true, lorax: true, tgi: true },
    },
    { name: "all-linear-r16", opts: { r: 16, lora_alpha: 32, target_modules: "all-linear" }, expect: { peft: true, vllm: true, lorax: true, tgi: true } },
    {
      name: "rank-32",
      opts: { r: 32, lora_alpha: 32, target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"] },
      expect: { peft: true, vllm: false, lorax: true, tgi: true },
    },
    {
      name: "dora",
      opts: { r: 8, lora_alpha: 16, target_modules: ["q_proj", "v_proj"], use_dora: true },
      expect: { peft: true, vllm: false, lorax: false, tgi: false },
    },
  ] as const;
  const written = new Map<string, { config: Record<string, unknown>; tensors: Record<string, { dtype: string }> }>();

  before(async () => {
    rules = await loadRules();
    work = await tempDir("scale-out");
    const backend = createCpuBackend();
    try {
      for (const c of CASES) {
        const model = await loadHfModel(STORIES, { backend });
        try {
          const peft = getPeftModel(model, { ...c.opts, base_model_name_or_path: "stories260K-hf" } as Parameters<typeof getPeftModel>[1], "default", {
            seed: 1,
          });
          const dir = join(work, c.name);
          await saveAdapter(peft, dir);
          const config = JSON.parse(await readFile(join(dir, "adapter_config.json"), "utf8")) as Record<string, unknown>;
          const file = await openSafetensors(join(dir, "adapter_model.safetensors"));
          const tensors = Object.fromEntries(file.names.map((n) => [n, { dtype: file.tensors[n].dtype }]));
          await file.close();
          written.set(c.name, { config, tensors });
        } finally {
          model.dispose();
        }
      }
    } finally {
      backend.dispose();
    }
  });

  after(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  test("the rules block parses and names every engine and family the doc covers", () => {
    for (const e of ["peft", "vllm", "lorax", "tgi"] as const) assert.ok(rules[e].required.length, e);
    assert.deepEqual(Object.keys(rules.targetModules).sort(), ["llama", "mistral", "qwen2", "qwen3"]);
    assert.ok(rules.vllm.allowedMaxRanks?.includes(rules.vllm.maxRank ?? -1));
  });

  for (const c of CASES) {
    test(`adapter ${c.name}: the verdict per engine matches the documented rules`, () => {
      const a = written.get(c.name)!;
      assert.ok(Array.isArray(a.config.target_modules), "all-linear is saved as the explicit list");
      for (const [engine, ok] of Object.entries(c.expect)) {
        const v = violations(a.config, a.tensors, rules[engine as keyof typeof c.expect], rules.targetModules.llama);
        if (ok) assert.deepEqual(v, [], `${c.name} should load on ${engine}`);
        else assert.ok(v.length > 0, `${c.name} should be flagged for ${engine}`);
      }
    });
  }
});
