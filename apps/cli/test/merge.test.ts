/**
 * `lowrank merge` end to end: an adapter trained (randomized) on stories260K is saved with
 * @lowrank/lora, merged by the CLI (spawned under Node, Bun and Deno), and the output directory,
 * loaded as a plain model, reproduces the adapter model's logits.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import process from "node:process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { Rng, noGrad, scope, setDefaultBackend, tensor } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { type LlamaForCausalLM, loadHfModel, resolveDataDir } from "@lowrank/nn/node";
import { getPeftModel, saveAdapter } from "@lowrank/lora/node";
import { command, lowrank } from "./spawn-cli.ts";

const backend = createCpuBackend({ threads: 0 });
setDefaultBackend(backend);
const dataDir = await resolveDataDir({ env: process.env });
const stories = dataDir ? join(dataDir, "models", "stories260K-hf") : null;
const skip = stories && existsSync(stories) ? false : "stories260K-hf not found: set LOWRANK_DATA_DIR or put shared/data beside the repo";

const PROMPT = [[1, 403, 407, 261, 378, 428, 269, 162, 263, 295, 30]];

function logits(m: LlamaForCausalLM): Float32Array {
  return noGrad(() => scope(() => m.forward(tensor(PROMPT, { dtype: "i32" })).readSync() as Float32Array));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** An adapter on stories260K with random non-zero A and B (all-linear, r 4, alpha 8), and its logits. */
async function makeAdapter(dir: string): Promise<Float32Array> {
  const model = await loadHfModel(stories as string);
  const peft = getPeftModel(model, { target_modules: "all-linear", r: 4, lora_alpha: 8, base_model_name_or_path: "stories260K-hf" }, "default", {
    warn: () => {},
  });
  const rng = new Rng(9);
  for (const [, l] of peft.loraLayers()) {
    for (const t of l.adapterParameters("default")) {
      const v = tensor(
        Float32Array.from({ length: t.size }, () => rng.normal() * 0.05),
        { shape: t.shape },
      );
      t.assign(v);
      v.dispose();
    }
  }
  const out = logits(model);
  await saveAdapter(peft, dir);
  model.dispose();
  return out;
}

for (const runtime of ["node", "bun", "deno"] as const) {
  test(`lowrank merge under ${runtime}: the merged directory reproduces the adapter model (< 1e-4)`, { skip, timeout: 180_000 }, async (t) => {
    if (!command(runtime)) return t.skip(`${runtime} is not installed (npm install at the repository root)`);
    const dir = await mkdtemp(join(tmpdir(), "lowrank-cli-merge-"));
    try {
      const adapterDir = join(dir, "adapter");
      const outDir = join(dir, "merged");
      const expected = await makeAdapter(adapterDir);
      const r = await lowrank(runtime, ["merge", "--model", stories as string, "--adapter", adapterDir, "--out", outDir]);
      assert.equal(r.code, 0, `exit ${r.code}\n${r.stdout}\n${r.stderr}`);
      assert.match(
        r.stdout,
        /^merged 35 LoRA layers of .* into .*; wrote .* \(f32\): config\.json, model\.safetensors, tokenizer\.json, tokenizer_config\.json$/m,
      );
      assert.deepEqual((await readdir(outDir)).sort(), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
      const merged = await loadHfModel(outDir);
      const diff = maxAbsDiff(logits(merged), expected);
      merged.dispose();
      t.diagnostic(`max |logit diff| lowrank merge (${runtime}) vs adapter model: ${diff.toExponential(3)}`);
      assert.ok(diff < 1e-4, `merged model differs by ${diff}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}

test("lowrank merge: missing flags are a usage error; a bad adapter fails with the reason", { skip }, async () => {
  const u = await lowrank("node", ["merge", "--model", stories as string]);
  assert.equal(u.code, 2);
  assert.match(u.stderr, /merge needs --adapter, --out \(lowrank merge --model <dir> --adapter <dir> --out <dir>/);
  const d = await lowrank("node", ["merge", "--model", "m", "--adapter", "a", "--out", "o", "--dtype", "f8"]);
  assert.equal(d.code, 2);
  assert.match(d.stderr, /--dtype f8: use f32, f16 or bf16/);
  const dir = await mkdtemp(join(tmpdir(), "lowrank-cli-merge-"));
  try {
    const f = await lowrank("node", ["merge", "--model", stories as string, "--adapter", dir, "--out", join(dir, "out")]);
    assert.equal(f.code, 1);
    assert.match(f.stderr, /^lowrank merge: .*adapter_config\.json: not found; .* is not a PEFT adapter directory/m);
    assert.ok(!existsSync(join(dir, "out")), "nothing written on failure");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
