/**
 * Target resolution, table-driven over stories260K's module names (built from its config.json
 * with placeholder weights): lists, suffixes, regexes, all-linear, exclusions, layer filters,
 * rank/alpha patterns, and the errors.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  LoraConfigError,
  type LoraConfigInput,
  formatTrainable,
  getPeftModel,
  loraConfig,
  minimalTargetModules,
  planInjection,
  pythonFixed,
} from "../src/node.ts";
import { storiesShapedModel } from "./helpers.ts";

const L = [0, 1, 2, 3, 4];
const attn = (p: string) => L.map((i) => `model.layers.${i}.self_attn.${p}`);
const mlp = (p: string) => L.map((i) => `model.layers.${i}.mlp.${p}`);
const ALL_LINEAR = L.flatMap((i) => [
  ...["q_proj", "k_proj", "v_proj", "o_proj"].map((p) => `model.layers.${i}.self_attn.${p}`),
  ...["gate_proj", "up_proj", "down_proj"].map((p) => `model.layers.${i}.mlp.${p}`),
]);

interface Case {
  name: string;
  config: LoraConfigInput;
  targets: string[];
  /** Expected r per module where it differs from config.r. */
  ranks?: Record<string, number>;
  alphas?: Record<string, number>;
  /** target_modules as stored after resolution. */
  stored?: unknown;
}

const CASES: Case[] = [
  { name: "list of suffixes", config: { target_modules: ["q_proj", "v_proj"] }, targets: [...attn("q_proj"), ...attn("v_proj")] },
  { name: "dotted suffix", config: { target_modules: ["self_attn.o_proj"] }, targets: attn("o_proj") },
  { name: "full module name", config: { target_modules: ["model.layers.3.mlp.down_proj"] }, targets: ["model.layers.3.mlp.down_proj"] },
  {
    name: "regex string (full match)",
    config: { target_modules: String.raw`.*\.layers\.[02]\.mlp\.(gate|up)_proj` },
    targets: ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj"],
  },
  {
    name: "all-linear skips lm_head and is stored as minimal suffixes",
    config: { target_modules: "all-linear" },
    targets: ALL_LINEAR,
    stored: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
  },
  {
    name: "all-linear minus exclude_modules list",
    config: { target_modules: "all-linear", exclude_modules: ["down_proj", "self_attn.k_proj"] },
    targets: ALL_LINEAR.filter((n) => !n.endsWith("down_proj") && !n.endsWith("k_proj")),
  },
  {
    name: "exclude_modules regex",
    config: { target_modules: ["q_proj", "k_proj"], exclude_modules: String.raw`.*layers\.4\..*` },
    targets: [...attn("q_proj"), ...attn("k_proj")].filter((n) => !n.includes("layers.4")),
  },
  {
    name: "layers_to_transform list",
    config: { target_modules: ["q_proj"], layers_to_transform: [0, 3] },
    targets: ["model.layers.0.self_attn.q_proj", "model.layers.3.self_attn.q_proj"],
  },
  {
    name: "layers_to_transform int with layers_pattern",
    config: { target_modules: ["up_proj"], layers_to_transform: 1, layers_pattern: "layers" },
    targets: ["model.layers.1.mlp.up_proj"],
  },
  { name: "lm_head when asked for by name", config: { target_modules: ["lm_head"] }, targets: ["lm_head"] },
  { name: "default targets for llama when target_modules is null", config: {}, targets: [...attn("q_proj"), ...attn("v_proj")] },
  {
    name: "rank_pattern and alpha_pattern (suffix and regex keys, PEFT's /(.*\\.)?(key)$/)",
    config: {
      target_modules: ["q_proj", "up_proj"],
      r: 8,
      lora_alpha: 16,
      rank_pattern: { q_proj: 4, "model.layers.1.mlp.up_proj": 2 },
      alpha_pattern: { [String.raw`layers\.0\..*_proj`]: 32 },
    },
    targets: [...attn("q_proj"), ...mlp("up_proj")],
    ranks: { ...Object.fromEntries(attn("q_proj").map((n) => [n, 4])), "model.layers.1.mlp.up_proj": 2 },
    alphas: { "model.layers.0.self_attn.q_proj": 32, "model.layers.0.mlp.up_proj": 32 },
  },
  { name: "modules_to_save is never a LoRA target", config: { target_modules: ["lm_head", "q_proj"], modules_to_save: ["lm_head"] }, targets: attn("q_proj") },
];

const sorted = (xs: string[]) => [...xs].sort();

for (const c of CASES) {
  test(`targets: ${c.name}`, () => {
    const model = storiesShapedModel();
    const plan = planInjection(model, loraConfig(c.config));
    assert.deepEqual(sorted(plan.targets.map((t) => t.name)), sorted(c.targets));
    for (const t of plan.targets) {
      assert.equal(t.r, c.ranks?.[t.name] ?? plan.config.r, `r of ${t.name}`);
      assert.equal(t.alpha, c.alphas?.[t.name] ?? plan.config.lora_alpha, `alpha of ${t.name}`);
    }
    if (c.stored !== undefined) assert.deepEqual(plan.config.target_modules, c.stored);
  });
}

const ERRORS: [string, LoraConfigInput, RegExp][] = [
  [
    "a list entry that matches nothing",
    { target_modules: ["q_proj", "qproj"] },
    /target_modules \["qproj"\] matched no module; available Linear modules: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head \(36 in all, e\.g\. model\.layers\.0\.self_attn\.q_proj\)/,
  ],
  [
    "a regex that matches nothing (full match, not search)",
    { target_modules: "q_proj" },
    /target_modules "q_proj" \(a full-match regex\) matched no module; available Linear modules: q_proj/,
  ],
  ["everything excluded", { target_modules: ["q_proj"], exclude_modules: ["q_proj"] }, /matched no module after exclude_modules\/layers_to_transform/],
  ["a non-Linear module", { target_modules: ["self_attn"] }, /model\.layers\.0\.self_attn \(LlamaAttention\) matches target_modules but is not a Linear layer/],
  ["the embeddings", { target_modules: ["embed_tokens"] }, /model\.embed_tokens \(Embedding\) matches target_modules .*modules_to_save: \["embed_tokens"\]/],
  [
    "r larger than a layer",
    { target_modules: ["k_proj"], r: 40 },
    /model\.layers\.0\.self_attn\.k_proj: r = 40 is larger than min\(in_features 64, out_features 32\) = 32/,
  ],
  [
    "rank_pattern too large for one layer",
    { target_modules: ["q_proj"], rank_pattern: { "layers.2.self_attn.q_proj": 65 } },
    /model\.layers\.2\.self_attn\.q_proj: r = 65 is larger than min\(in_features 64, out_features 64\) = 64/,
  ],
  ["modules_to_save entry not found", { target_modules: ["q_proj"], modules_to_save: ["score"] }, /modules_to_save entry "score" matched no module/],
  ["empty target list", { target_modules: [] }, /target_modules is an empty list/],
];
for (const [name, config, message] of ERRORS) {
  test(`target errors: ${name}`, () => {
    const model = storiesShapedModel();
    const before = model.namedModules().map(([n]) => n);
    assert.throws(
      () => getPeftModel(model, config, "default", { warn: () => {} }),
      (e: unknown) => e instanceof LoraConfigError && message.test((e as Error).message),
    );
    assert.deepEqual(
      model.namedModules().map(([n]) => n),
      before,
      "a refused config leaves the model untouched",
    );
  });
}

test("trainable-parameter count is sum over targets of r*(in+out) (stories260K, all-linear, r=8), in PEFT's format", () => {
  const model = storiesShapedModel();
  const base = model.parameters().reduce((n, t) => n + t.size, 0);
  assert.equal(base, 260_032); // embed (tied with lm_head, counted once) + 5 layers + final norm
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 8 }, "default", { warn: () => {} });
  const perLayer = 64 + 64 + (64 + 32) + (64 + 32) + (64 + 64) + 3 * (64 + 172);
  assert.equal(perLayer, 1156);
  const expected = 8 * 5 * perLayer;
  const fromFormula = peft.loraLayers().reduce((n, [, l]) => n + (l.r.get("default") as number) * (l.inFeatures + l.outFeatures), 0);
  assert.equal(fromFormula, expected);
  const { trainable, all } = peft.countParameters();
  assert.equal(trainable, expected);
  assert.equal(all, base + expected);
  const lines: string[] = [];
  const line = peft.printTrainableParameters((l) => lines.push(l));
  assert.equal(line, "trainable params: 46,240 || all params: 306,272 || trainable%: 15.0977");
  assert.deepEqual(lines, [line]);
  model.dispose();
});

test("minimalTargetModules condenses long name lists as PEFT does", () => {
  const others = ["model.embed_tokens", "lm_head", "model.norm", ...L.map((i) => `model.layers.${i}.self_attn`)];
  assert.deepEqual(minimalTargetModules(ALL_LINEAR, others), ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
  // q_proj only in layers 0-1: a suffix alone would also pick layers 2-4, so longer names are kept.
  const some = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"];
  const rest = attn("q_proj").slice(2);
  assert.deepEqual(minimalTargetModules(some, rest), ["0.self_attn.q_proj", "1.self_attn.q_proj"]);
});

test("fan_in_fan_out is reset to false for Linear targets, with a warning (as PEFT)", () => {
  const warnings: string[] = [];
  const peft = getPeftModel(storiesShapedModel(), { target_modules: ["q_proj"], fan_in_fan_out: true }, "default", { warn: (w) => warnings.push(w) });
  assert.equal(peft.peftConfig.get("default")?.fan_in_fan_out, false);
  assert.match(warnings.join("\n"), /fan_in_fan_out is true but the targets are Linear layers/);
});

test("a tied lm_head can be adapted but not merged", async () => {
  const warnings: string[] = [];
  const peft = getPeftModel(storiesShapedModel(), { target_modules: ["lm_head"] }, "default", { warn: (w) => warnings.push(w) });
  assert.match(warnings.join("\n"), /lm_head\.weight is tied to model\.embed_tokens\.weight/);
  await assert.rejects(peft.merge(), /lm_head: cannot merge: its weight is tied to model\.embed_tokens\.weight/);
});

test("PEFT's number format: {:,d} counts and {:.4f} percent (ties to even, as Python)", () => {
  assert.equal(formatTrainable(1234, 5678), "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330");
  assert.equal(formatTrainable(0, 1_234_567_890), "trainable params: 0 || all params: 1,234,567,890 || trainable%: 0.0000");
  assert.equal(pythonFixed(0.03125, 4), "0.0312"); // Python: '0.0312'; toFixed gives '0.0313'
  assert.equal(pythonFixed(0.03135, 4), (0.03135).toFixed(4)); // not an exact tie in binary
  assert.equal(pythonFixed(2.5, 0), "2");
  assert.equal(pythonFixed(3.5, 0), "4");
  assert.equal(pythonFixed(15.097691, 4), "15.0977");
});
