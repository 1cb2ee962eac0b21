/** loadHfModelFromFiles (in-memory files) must give the same model as loadHfModel on the directory. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { noGrad, scope, tensor } from "@lowrank/tensor";
import { type LlamaForCausalLM, loadHfModel, loadHfModelFromFiles, loadTokenizer } from "../src/node.ts";
import { noData, storiesHfDir } from "./helpers.ts";

const skip = noData;
const dir = () => storiesHfDir as string;

async function logitsOf(m: LlamaForCausalLM, ids: number[]): Promise<Float32Array> {
  const t = noGrad(() => scope(() => m.forward(tensor([ids], { dtype: "i32" }))));
  const v = (await t.read()) as Float32Array;
  t.dispose();
  return v;
}

test("loadHfModelFromFiles on stories260K-hf: identical logits and tokenizer to loadHfModel", { skip }, async () => {
  const bytes = (f: string) => readFile(join(dir(), f));
  const weights = new Map([["model.safetensors", new Uint8Array(await bytes("model.safetensors"))]]);
  const { model, tokenizer } = await loadHfModelFromFiles({
    config: new Blob([await bytes("config.json")]),
    weights,
    tokenizer: await bytes("tokenizer.json").then((b) => b.toString()),
    tokenizerConfig: JSON.parse((await bytes("tokenizer_config.json")).toString()),
  });
  const ref = await loadHfModel(dir());
  const refTok = await loadTokenizer(dir());
  try {
    assert.ok(tokenizer);
    const ids = refTok.encode("Once upon a time");
    assert.deepEqual(tokenizer.encode("Once upon a time"), ids);
    assert.deepEqual(await logitsOf(model, ids), await logitsOf(ref, ids));
  } finally {
    model.dispose();
    ref.dispose();
  }
});

test("loadHfModelFromFiles: missing weights and shards are named", { skip }, async () => {
  const config = JSON.parse((await readFile(join(dir(), "config.json"))).toString());
  await assert.rejects(loadHfModelFromFiles({ config, weights: new Map() }), /model\.safetensors: not among the given files/);
  const index = { weight_map: { "model.embed_tokens.weight": "model-00001-of-00002.safetensors" } };
  await assert.rejects(loadHfModelFromFiles({ config, weights: new Map(), index }), /model-00001-of-00002\.safetensors.*not among the given files.*shard/);
});
