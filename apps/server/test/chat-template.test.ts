/** /v1/chat/completions lays the prompt out with the model's chat template, ChatML only without one. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { loadTokenizer } from "@lowrank/nn/node";
import { chatPrompt } from "@lowrank/trainer/node";
import { NEED_MODEL, STORIES, call, startTestServer, tempDir } from "./helpers.ts";

// A small template in the style of real ones: BOS, a header per turn, EOS closing each turn, and a
// raise_exception for a conversation it does not accept.
const TEMPLATE =
  "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations must start with a system or user message') }}{% endif %}" +
  "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}" +
  "{% if add_generation_prompt %}[assistant] {% endif %}";

test(
  "chat completions render the model's chat_template (generation prompt, no doubled BOS); ChatML without one, said once at start",
  { skip: NEED_MODEL },
  async () => {
    const dir = await tempDir("templated");
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]) await copyFile(join(STORIES, f), join(dir, f));
    await writeFile(join(dir, "chat_template.jinja"), TEMPLATE);
    const messages = [
      { role: "system", content: "You tell stories." },
      { role: "user", content: "Once upon a time" },
    ];
    const body = { model: "m", messages, max_tokens: 6, temperature: 0 };
    const templated = await startTestServer({ modelDir: dir });
    try {
      assert.ok(
        templated.logs.some((l) => l === `chat prompts (/v1/chat/completions): the model's chat_template (${join(dir, "chat_template.jinja")})`),
        templated.logs.join("\n"),
      );
      const r = await call(templated.url, "POST", "/v1/chat/completions", { body: { ...body, model: templated.ctx.host.id } });
      assert.equal(r.status, 200, r.text);
      const tok = await loadTokenizer(dir);
      const rendered = "<s>[system] You tell stories.</s>[user] Once upon a time</s>[assistant] ";
      const ids = tok.encode(rendered, { addSpecialTokens: false });
      assert.equal(ids.filter((id) => id === tok.bosTokenId).length, 1);
      assert.equal(r.json.usage.prompt_tokens, ids.length);
      assert.notEqual(ids.length, tok.encode(chatPrompt(messages as never)).length);
      const bad = await call(templated.url, "POST", "/v1/chat/completions", {
        body: { ...body, model: templated.ctx.host.id, messages: [{ role: "assistant", content: "x" }] },
      });
      assert.equal(bad.status, 400);
      assert.equal(bad.json.error.field, "messages");
      assert.equal(bad.json.error.message, "the model's chat template refused the messages: Conversations must start with a system or user message");
    } finally {
      await templated.close();
      await rm(dir, { recursive: true, force: true });
    }
    const plain = await startTestServer();
    try {
      assert.equal(plain.logs.filter((l) => l.startsWith("chat prompts")).length, 1);
      assert.ok(plain.logs.includes("chat prompts (/v1/chat/completions): ChatML (the tokenizer has no chat_template)"), plain.logs.join("\n"));
      const r = await call(plain.url, "POST", "/v1/chat/completions", { body: { ...body, model: plain.ctx.host.id } });
      assert.equal(r.status, 200, r.text);
      const tok = await loadTokenizer(STORIES);
      assert.equal(r.json.usage.prompt_tokens, tok.encode(chatPrompt(messages as never)).length);
    } finally {
      await plain.close();
    }
  },
);
