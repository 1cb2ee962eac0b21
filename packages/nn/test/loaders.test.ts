/**
 * Loaders on small synthetic checkpoints written to a temp dir: round trips (single file,
 * sharded, dtype conversion, llama2.c bytes) and every failure naming the file and the problem.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { noGrad, scope, tensor } from "@lowrank/tensor";
import { type LazyTensorInput, openSafetensors, writeSafetensors } from "@lowrank/safetensors/node";
import {
  type LlamaForCausalLM,
  Llama2cTokenizer,
  llama2cFromBytes,
  loadHfModel,
  loadLlama2c,
  loadLlama2cTokenizer,
  loadTokenizer,
  resolveDataDir,
  saveHfModel,
} from "../src/node.ts";
import { maxAbsDiff, noData, storiesDir, tinyModel, tokBytes, withTempDir } from "./helpers.ts";

const ids = [1, 3, 8, 20, 5, 11];
const run = (m: LlamaForCausalLM) => noGrad(() => scope(() => Array.from(m.forward(tensor([ids], { dtype: "i32" })).readSync())));

/** Rewrite dir/model.safetensors through `edit` (a map of name -> tensor to change). */
async function rewrite(dir: string, edit: (t: Map<string, LazyTensorInput>) => void): Promise<string> {
  const path = join(dir, "model.safetensors");
  const f = await openSafetensors(path);
  const tensors = new Map<string, LazyTensorInput>();
  for (const name of f.names) {
    const d = await f.read(name);
    tensors.set(name, { dtype: d.dtype, shape: d.shape, data: d.data.slice() });
  }
  await f.close();
  edit(tensors);
  await writeSafetensors(path, tensors, { format: "pt" }, { fsync: false });
  return path;
}

async function errorOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as Error).message;
  }
  assert.fail("expected an error");
}

test("saveHfModel -> loadHfModel round trip: single file, sharded, tied and untied", async () => {
  for (const tie of [false, true]) {
    const m = tinyModel({ tie_word_embeddings: tie });
    const want = run(m);
    await withTempDir(async (dir) => {
      const files = await saveHfModel(m, dir);
      assert.deepEqual(files, ["config.json", "model.safetensors"]);
      const f = await openSafetensors(join(dir, "model.safetensors"));
      assert.equal(f.has("lm_head.weight"), !tie, "tied weights are saved once, like transformers");
      assert.equal(f.metadata.format, "pt");
      await f.close();
      const back = await loadHfModel(dir);
      assert.deepEqual(run(back), want);
      back.dispose();

      const sharded = join(dir, "sharded");
      const shardFiles = await saveHfModel(m, sharded, { maxShardBytes: 4000 });
      assert.ok(shardFiles.includes("model.safetensors.index.json") && shardFiles.length > 3, shardFiles.join());
      const back2 = await loadHfModel(sharded);
      assert.deepEqual(run(back2), want);
      back2.dispose();
    });
    m.dispose();
  }
});

test("dtype conversion: BF16/F16 checkpoints load as f32 and f32 ones as bf16", async () => {
  const m = tinyModel();
  const want = run(m);
  await withTempDir(async (dir) => {
    await saveHfModel(m, dir);
    const bf = await loadHfModel(dir, { dtype: "bf16" });
    assert.equal(bf.dtype, "bf16");
    assert.ok(maxAbsDiff(run(bf), want) < 0.1);
    const half = join(dir, "bf16");
    await saveHfModel(bf, half);
    const f = await openSafetensors(join(half, "model.safetensors"));
    assert.equal(f.tensors["model.norm.weight"].dtype, "BF16");
    await f.close();
    const back = await loadHfModel(half, { dtype: "f32" });
    // bf16 -> f32 is exact, so only the f32 compute differs from the bf16 model's
    assert.ok(maxAbsDiff(run(back), run(bf)) < 0.1);
    assert.deepEqual(back.model.norm.weight.readSync(), bf.model.norm.weight.readSync());
    const f16 = await loadHfModel(dir, { dtype: "f16" });
    assert.ok(maxAbsDiff(run(f16), want) < 0.02);
    for (const x of [bf, back, f16]) x.dispose();
  });
  m.dispose();
});

test("loadHfModel errors name the file and the problem", async () => {
  const m = tinyModel();
  await withTempDir(async (dir) => {
    const cfgPath = join(dir, "config.json");
    // missing config
    assert.match(await errorOf(loadHfModel(dir)), new RegExp(`${escape(cfgPath)}: not found \\(the model's config.json\\)`));
    await saveHfModel(m, dir);
    const goodConfig = await readFile(cfgPath, "utf8");

    // unsupported and broken configs
    await writeFile(cfgPath, JSON.stringify({ ...JSON.parse(goodConfig), model_type: "gpt2" }));
    assert.match(await errorOf(loadHfModel(dir)), new RegExp(`${escape(cfgPath)}: model_type = "gpt2" is not supported`));
    await writeFile(cfgPath, JSON.stringify({ ...JSON.parse(goodConfig), rope_scaling: { rope_type: "yarn", factor: 4 } }));
    assert.match(await errorOf(loadHfModel(dir)), /config\.json: rope_scaling\.rope_type = "yarn" is not supported/);
    await writeFile(cfgPath, "{ not json");
    assert.match(await errorOf(loadHfModel(dir)), new RegExp(`${escape(cfgPath)}: not valid JSON`));
    await writeFile(cfgPath, goodConfig);

    // wrong dtype: an I64 tensor where a float weight belongs
    const st = await rewrite(dir, (t) => {
      const e = t.get("model.norm.weight") as LazyTensorInput;
      t.set("model.norm.weight", { dtype: "I64", shape: e.shape, data: new Uint8Array(e.shape[0] * 8) });
    });
    assert.match(await errorOf(loadHfModel(dir)), new RegExp(`${escape(st)}: tensor "model.norm.weight" has dtype I64, expected a float weight`));

    // missing / unexpected / mis-shaped tensors, all in one error naming the file
    await saveHfModel(m, dir);
    await rewrite(dir, (t) => {
      t.set("model.layers.0.mlp.gate_proj.weght", t.get("model.layers.0.mlp.gate_proj.weight") as LazyTensorInput);
      t.delete("model.layers.0.mlp.gate_proj.weight");
      t.set("model.norm.weight", { dtype: "F32", shape: [3], data: new Float32Array(3) });
    });
    const keys = await errorOf(loadHfModel(dir));
    assert.match(keys, new RegExp(`^${escape(st)}: state dict does not match the model \\(1 missing key, 1 unexpected key, 1 mismatch\\)`));
    assert.match(keys, /missing: model\.layers\.0\.mlp\.gate_proj\.weight/);
    assert.match(keys, /unexpected: model\.layers\.0\.mlp\.gate_proj\.weght/);
    assert.match(keys, /shape mismatch for model\.norm\.weight: checkpoint \[3\], model \[16\]/);

    // truncated file
    await saveHfModel(m, dir);
    await truncate(st, 3000);
    assert.match(await errorOf(loadHfModel(dir)), new RegExp(`${escape(st)}: .*truncated`));
    await truncate(st, 5);
    assert.match(await errorOf(loadHfModel(dir)), new RegExp(`${escape(st)}: .*truncated`));

    // no weights at all
    await rm(st);
    assert.match(await errorOf(loadHfModel(dir)), /neither model\.safetensors\.index\.json nor model\.safetensors exists.*no weights/);

    // missing shard
    const files = await saveHfModel(m, dir, { maxShardBytes: 4000 });
    const shard = files.find((f) => f.includes("-00002-of-")) as string;
    await rm(join(dir, shard));
    assert.match(
      await errorOf(loadHfModel(dir)),
      new RegExp(
        `${escape(join(dir, "model.safetensors.index.json"))}: .*shard file "${escape(shard)}" does not exist.*a shard of the sharded checkpoint is missing`,
      ),
    );
  });
  m.dispose();
});

/** HF rotate_half rows back to llama2.c's interleaved layout (the inverse of permuteRotaryRows). */
function unpermute(w: Float32Array, nHeads: number, hs: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < hs / 2; j++) {
      for (let c = 0; c < 2; c++) out.set(w.subarray((h * hs + c * (hs / 2) + j) * cols, (h * hs + c * (hs / 2) + j + 1) * cols), (h * hs + 2 * j + c) * cols);
    }
  }
  return out;
}

/** A llama2.c legacy export of a model, written the way export.py's legacy_export does. */
function exportLlama2c(m: LlamaForCausalLM): Uint8Array {
  const c = m.config;
  const get = (n: string) => (m.tensorAt(n) ?? assert.fail(n)).readSync() as Float32Array;
  const L = c.num_hidden_layers;
  const layers = (suffix: string, fn: (w: Float32Array) => Float32Array = (w) => w) =>
    Array.from({ length: L }, (_, i) => fn(get(`model.layers.${i}.${suffix}`)));
  const hs = c.head_dim;
  const parts: Float32Array[] = [
    get("model.embed_tokens.weight"),
    ...layers("input_layernorm.weight"),
    ...layers("self_attn.q_proj.weight", (w) => unpermute(w, c.num_attention_heads, hs, c.hidden_size)),
    ...layers("self_attn.k_proj.weight", (w) => unpermute(w, c.num_key_value_heads, hs, c.hidden_size)),
    ...layers("self_attn.v_proj.weight"),
    ...layers("self_attn.o_proj.weight"),
    ...layers("post_attention_layernorm.weight"),
    ...layers("mlp.gate_proj.weight"),
    ...layers("mlp.down_proj.weight"),
    ...layers("mlp.up_proj.weight"),
    get("model.norm.weight"),
    new Float32Array(c.max_position_embeddings * hs), // freq_cis_real + freq_cis_imag (ignored)
    ...(c.tie_word_embeddings ? [] : [get("lm_head.weight")]),
  ];
  const header = new Int32Array([
    c.hidden_size,
    c.intermediate_size,
    L,
    c.num_attention_heads,
    c.num_key_value_heads,
    c.tie_word_embeddings ? c.vocab_size : -c.vocab_size,
    c.max_position_embeddings,
  ]);
  const total = 28 + 4 * parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(total);
  out.set(new Uint8Array(header.buffer), 0);
  let at = 28;
  for (const p of parts) {
    out.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), at);
    at += p.byteLength;
  }
  assert.equal(at, total);
  return out;
}

test("llama2.c bytes (shared and unshared classifier) load to the same model, with errors for bad files", async () => {
  for (const tie of [true, false]) {
    const m = tinyModel({ tie_word_embeddings: tie, max_position_embeddings: 32 });
    const bytes = exportLlama2c(m);
    const back = llama2cFromBytes(bytes, { file: "tiny.bin" });
    assert.equal(back.config.tie_word_embeddings, tie);
    assert.ok(maxAbsDiff(run(back), run(m)) < 1e-5);
    assert.throws(
      () => llama2cFromBytes(bytes.subarray(0, bytes.length - 4), { file: "tiny.bin" }),
      /^Error: tiny\.bin: truncated: \d+ bytes, but the header .* needs \d+/,
    );
    assert.throws(
      () => llama2cFromBytes(bytes.subarray(0, 20), { file: "tiny.bin" }),
      /tiny\.bin: truncated: 20 bytes, shorter than the 28-byte llama2\.c header/,
    );
    const extra = new Uint8Array(bytes.length + 8);
    extra.set(bytes);
    assert.throws(() => llama2cFromBytes(extra, { file: "tiny.bin" }), /tiny\.bin: 8 bytes beyond/);
    const v1 = bytes.slice();
    new DataView(v1.buffer).setUint32(0, 0x616b3432, true);
    assert.throws(() => llama2cFromBytes(v1, { file: "tiny.bin" }), /tiny\.bin: llama2\.c version .* is not supported/);
    back.dispose();
    m.dispose();
  }
  await withTempDir(async (dir) => {
    assert.match(await errorOf(loadLlama2c(join(dir, "nope.bin"))), new RegExp(`${escape(join(dir, "nope.bin"))}: not found \\(a llama2\\.c checkpoint\\)`));
  });
});

test("llama2.c stories260K.bin truncated on disk: the error names the file", { skip: noData }, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "stories260K.bin");
    const bytes = await readFile(join(storiesDir as string, "stories260K.bin"));
    await writeFile(path, bytes.subarray(0, 500_000));
    assert.match(
      await errorOf(loadLlama2c(path)),
      new RegExp(`${escape(path)}: truncated: 500000 bytes, but the header \\(dim=64, n_layers=5, vocab_size=512, seq_len=512\\) needs 1056540`),
    );
    const tokPath = join(dir, "tok512.bin");
    await writeFile(tokPath, (await readFile(join(storiesDir as string, "tok512.bin"))).subarray(0, 3000));
    assert.match(await errorOf(loadLlama2cTokenizer(tokPath, 512)), new RegExp(`${escape(tokPath)}: truncated: .* runs past the end \\(3000 bytes\\)`));
  });
});

test("loadTokenizer: a missing or malformed tokenizer.json is named", async () => {
  await withTempDir(async (dir) => {
    assert.match(await errorOf(loadTokenizer(dir)), new RegExp(`${escape(join(dir, "tokenizer.json"))}: not found`));
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0" }));
    assert.match(await errorOf(loadTokenizer(dir)), /tokenizer\.json: not a tokenizer\.json \(no "model" section\)/);
  });
});

test("resolveDataDir: explicit option, then the env object, then ../shared/data beside the repo", async () => {
  await withTempDir(async (dir) => {
    assert.equal(await resolveDataDir({ dataDir: dir, env: { LOWRANK_DATA_DIR: "/elsewhere" } }), dir);
    assert.equal(await resolveDataDir({ env: { LOWRANK_DATA_DIR: dir } }), dir);
    assert.match(
      await errorOf(resolveDataDir({ env: { LOWRANK_DATA_DIR: join(dir, "missing") } })),
      /missing: data directory \(from LOWRANK_DATA_DIR\) does not exist/,
    );
    const repo = join(dir, "repo");
    assert.equal(await resolveDataDir({ repoRoot: repo, env: {} }), null);
    await import("node:fs/promises").then((fs) => fs.mkdir(join(dir, "shared", "data"), { recursive: true }));
    assert.equal(await resolveDataDir({ repoRoot: repo, env: {} }), join(dir, "shared", "data"));
  });
});

test("Llama2cTokenizer parses a synthetic vocabulary and rejects malformed ones", () => {
  const pieces = [
    "<unk>",
    "\n<s>\n",
    "\n</s>\n",
    ...Array.from({ length: 256 }, (_, i) => `<0x${i.toString(16).toUpperCase().padStart(2, "0")}>`),
    " ",
    "a",
    "b",
    "ab",
    " ab",
  ];
  const bytes = tokBytes(pieces, (i) => (i < 259 ? 0 : -(i - 259)));
  const tok = Llama2cTokenizer.fromBytes(bytes);
  assert.equal(tok.vocabSize, pieces.length);
  // " ", a, b, " ", a, b -> ab merges first (score -3), then " " + ab (score -4)
  assert.deepEqual(tok.encode("ab ab"), [1, 263, 263]);
  assert.deepEqual(tok.encode("abc"), [1, 263, 99 + 3]);
  assert.equal(tok.decode([1, 263, 263]), "ab ab");
  assert.equal(tok.decode([259, 262]), "ab", "the leading space is dropped at the start");
  assert.throws(() => Llama2cTokenizer.fromBytes(bytes.subarray(0, 101), undefined, "t.bin"), /t\.bin: truncated/);
  assert.throws(
    () =>
      Llama2cTokenizer.fromBytes(
        tokBytes(["<unk>", "a"], () => 0),
        undefined,
        "t.bin",
      ),
    /t\.bin: 2 pieces/,
  );
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
