/**
 * OpenAI-compatible inference over real HTTP on 127.0.0.1: no cross-talk between adapters under
 * concurrency and hot swaps, SSE format, plain-fetch OpenAI requests, /v1/models, A/B aliases,
 * stop sequences and the LRU cache.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { loadAdapter } from "@lowrank/lora/node";
import { generateIds, loadHfModel, loadTokenizer } from "@lowrank/nn/node";
import { ADMIN, NEED_MODEL, STORIES, type TestServer, call, completion, makeAdapter, parseSse, startTestServer, tempDir, upload } from "./helpers.ts";

const PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the"];
const ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/** What `dir` alone produces for each prompt, greedy, computed in this process on a fresh model. */
async function reference(dir: string | null, maxNew: number): Promise<Map<string, string>> {
  const backend = createCpuBackend();
  const model = await loadHfModel(STORIES, { backend });
  const tok = await loadTokenizer(STORIES);
  try {
    if (dir) await loadAdapter(model, dir, "default", { ignoreBaseModel: true });
    model.eval();
    const out = new Map<string, string>();
    for (const p of PROMPTS) out.set(p, tok.decode(await generateIds(model, tok.encode(p), { maxNewTokens: maxNew, stopTokens: [2] })));
    return out;
  } finally {
    model.dispose();
    backend.dispose();
  }
}

describe("inference", { skip: NEED_MODEL }, () => {
  let s: TestServer;
  let work: string;
  const dirs: Record<string, string> = {};
  const refs: Record<string, Map<string, string>> = {};

  before(async () => {
    work = await tempDir("inference");
    dirs.a1 = await makeAdapter(join(work, "a1"), 11, { r: 4, scale: 0.5 });
    dirs.b1 = await makeAdapter(join(work, "b1"), 22, { r: 8, targets: ALL_LINEAR, scale: 0.5 });
    dirs.b2 = await makeAdapter(join(work, "b2"), 27, { r: 8, targets: ALL_LINEAR, scale: 0.8 });
    dirs.c1 = await makeAdapter(join(work, "c1"), 33, { r: 2, targets: ["o_proj", "down_proj"], scale: 0.6 });
    for (const k of ["a1", "b1", "b2", "c1"]) refs[k] = await reference(dirs[k], 20);
    refs.base = await reference(null, 20);
    s = await startTestServer();
    for (const [name, dir] of [
      ["alpha", dirs.a1],
      ["beta", dirs.b1],
      ["gamma", dirs.c1],
    ] as const) {
      const r = await upload(s.url, name, dir);
      assert.equal(r.status, 201, r.text);
    }
  });

  after(async () => {
    await s?.close();
    await rm(work, { recursive: true, force: true });
  });

  test("the references differ, so a cross-talk would show", () => {
    for (const p of PROMPTS) {
      const outs = ["base", "a1", "b1", "b2", "c1"].map((k) => refs[k].get(p));
      assert.equal(new Set(outs).size, outs.length, `outputs for ${JSON.stringify(p)} are not all distinct: ${JSON.stringify(outs)}`);
    }
  });

  test("concurrent requests with different adapters during hot swaps match each adapter alone", async () => {
    const models = ["stories260K-hf", "alpha@1", "stories260K-hf:beta@1", "gamma", "beta"];
    const key: Record<string, string> = { "stories260K-hf": "base", "alpha@1": "a1", "stories260K-hf:beta@1": "b1", gamma: "c1" };
    const requests = Array.from({ length: 30 }, (_, i) => ({ model: models[i % models.length], prompt: PROMPTS[i % PROMPTS.length], stream: i % 3 === 0 }));
    const run = async (r: (typeof requests)[number]) => {
      const res = await call(s.url, "POST", "/v1/completions", { body: completion(r.model, r.prompt, { max_tokens: 20, stream: r.stream }) });
      assert.equal(res.status, 200, res.text);
      if (!r.stream)
        return { ...r, text: res.json.choices[0].text as string, adapter: res.json.adapter as string | null, header: res.headers.get("x-lowrank-adapter") };
      const chunks = parseSse(res.text)
        .filter((e) => e.data !== "[DONE]")
        .map((e) => JSON.parse(e.data));
      return {
        ...r,
        text: chunks.map((c) => c.choices[0]?.text ?? "").join(""),
        adapter: chunks[0].adapter as string | null,
        header: res.headers.get("x-lowrank-adapter"),
      };
    };
    // Swaps while the requests are queued: a new current version of beta, alpha unloaded and reloaded.
    const swaps = (async () => {
      await new Promise((r) => setTimeout(r, 30));
      const up = await upload(s.url, "beta", dirs.b2);
      assert.equal(up.status, 201, up.text);
      for (let i = 0; i < 3; i++) {
        assert.equal((await call(s.url, "POST", "/v1/adapters/alpha/versions/1/unload")).status, 200);
        assert.equal((await call(s.url, "POST", "/v1/adapters/alpha/versions/1/load")).status, 200);
      }
    })();
    const results = await Promise.all([...requests.map(run), swaps]);
    let floating = { b1: 0, b2: 0 };
    for (const r of results.slice(0, requests.length) as Awaited<ReturnType<typeof run>>[]) {
      const k = r.model === "beta" ? (r.adapter === "beta@2" ? "b2" : "b1") : key[r.model];
      if (r.model === "beta") floating[k as "b1" | "b2"]++;
      assert.equal(r.text, refs[k].get(r.prompt), `${r.model} (${r.adapter}, ${r.stream ? "stream" : "json"}) on ${JSON.stringify(r.prompt)}`);
      assert.equal(r.header, r.adapter ?? "none");
    }
    assert.ok(floating.b1 + floating.b2 === 6, JSON.stringify(floating));
    // They shared decode steps (continuous batching), adapters mixed within a step.
    const batching = (await call(s.url, "GET", "/v1/cache")).json.batching;
    assert.ok(batching.max_batch > 1 && batching.sequence_steps > batching.decode_steps, JSON.stringify(batching));
    const after = await call(s.url, "POST", "/v1/completions", { body: completion("beta", PROMPTS[0], { max_tokens: 20 }) });
    assert.equal(after.json.adapter, "beta@2", "the upload made beta@2 current");
    assert.equal(after.json.choices[0].text, refs.b2.get(PROMPTS[0]));
  });

  test("SSE: OpenAI chunk format, text equal to the non-streamed result, data: [DONE] last", async () => {
    const body = completion("alpha@1", PROMPTS[1], { max_tokens: 20 });
    const plain = await call(s.url, "POST", "/v1/completions", { body });
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    assert.equal(res.headers.get("x-lowrank-adapter"), "alpha@1");
    const text = await res.text();
    assert.ok(text.endsWith("data: [DONE]\n\n"), "ends with data: [DONE]");
    const blocks = text.split("\n\n").filter(Boolean);
    for (const b of blocks) assert.match(b, /^data: /, "every event is a data: line");
    const chunks = blocks.slice(0, -1).map((b) => JSON.parse(b.slice(6)));
    assert.ok(chunks.length >= 3);
    for (const c of chunks) {
      assert.equal(c.object, "text_completion");
      assert.equal(c.id, chunks[0].id);
      assert.equal(c.model, "stories260K-hf:alpha@1");
      assert.equal(c.adapter, "alpha@1");
    }
    const usageChunk = chunks[chunks.length - 1];
    assert.deepEqual(usageChunk.choices, []);
    assert.equal(usageChunk.usage.completion_tokens, plain.json.usage.completion_tokens);
    const last = chunks[chunks.length - 2];
    assert.equal(last.choices[0].finish_reason, plain.json.choices[0].finish_reason);
    assert.equal(
      chunks
        .slice(0, -1)
        .map((c) => c.choices[0].text)
        .join(""),
      plain.json.choices[0].text,
    );
    for (const c of chunks.slice(0, -2)) assert.equal(c.choices[0].finish_reason, null);

    const chat = await call(s.url, "POST", "/v1/chat/completions", {
      body: { model: "gamma", messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 12, temperature: 0, stream: true },
    });
    const events = parseSse(chat.text);
    assert.equal(events[events.length - 1].data, "[DONE]");
    const cc = events.slice(0, -1).map((e) => JSON.parse(e.data));
    assert.deepEqual(cc[0].choices[0].delta, { role: "assistant", content: "" });
    assert.equal(cc[0].object, "chat.completion.chunk");
    assert.ok(["stop", "length"].includes(cc[cc.length - 1].choices[0].finish_reason));
    assert.deepEqual(cc[cc.length - 1].choices[0].delta, {});
    const streamed = cc.map((c) => c.choices[0].delta.content ?? "").join("");
    const nonStream = await call(s.url, "POST", "/v1/chat/completions", {
      body: { model: "gamma", messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 12, temperature: 0 },
    });
    assert.equal(streamed, nonStream.json.choices[0].message.content);
  });

  test("a plain OpenAI-style fetch works unchanged (extra OpenAI fields accepted)", async () => {
    const res = await fetch(`${s.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${ADMIN}` },
      body: JSON.stringify({
        model: "stories260K-hf:alpha",
        messages: [
          { role: "system", content: "You tell stories." },
          { role: "user", content: [{ type: "text", text: "Once upon a time" }] },
        ],
        temperature: 0.7,
        top_p: 0.9,
        max_tokens: 16,
        n: 1,
        presence_penalty: 0,
        frequency_penalty: 0,
        seed: 7,
        user: "u-1",
        stream: false,
        logprobs: false,
      }),
    });
    assert.equal(res.status, 200);
    const j = await res.json();
    assert.equal(j.object, "chat.completion");
    assert.match(j.id, /^chatcmpl-/);
    assert.equal(typeof j.created, "number");
    assert.equal(j.model, "stories260K-hf:alpha@1");
    assert.equal(j.choices[0].message.role, "assistant");
    assert.equal(typeof j.choices[0].message.content, "string");
    assert.equal(j.usage.total_tokens, j.usage.prompt_tokens + j.usage.completion_tokens);
    // Same seed, same output.
    const again = await (
      await fetch(`${s.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({
          model: "stories260K-hf:alpha",
          messages: [
            { role: "system", content: "You tell stories." },
            { role: "user", content: "Once upon a time" },
          ],
          temperature: 0.7,
          top_p: 0.9,
          max_tokens: 16,
          seed: 7,
        }),
      })
    ).json();
    assert.equal(again.choices[0].message.content, j.choices[0].message.content);
  });

  test("GET /v1/models lists the base, name@version, current names and aliases", async () => {
    await call(s.url, "PUT", "/v1/aliases/support-bot", {
      body: {
        targets: [
          { adapter: "beta@1", weight: 1 },
          { adapter: "beta@2", weight: 1 },
        ],
      },
    });
    const r = await call(s.url, "GET", "/v1/models");
    assert.equal(r.status, 200);
    assert.equal(r.json.object, "list");
    const ids = r.json.data.map((m: { id: string }) => m.id);
    for (const id of [
      "stories260K-hf",
      "stories260K-hf:alpha@1",
      "stories260K-hf:beta@1",
      "stories260K-hf:beta@2",
      "stories260K-hf:beta",
      "stories260K-hf:gamma@1",
      "stories260K-hf:support-bot",
    ]) {
      assert.ok(ids.includes(id), `${id} in ${ids.join(", ")}`);
    }
    for (const m of r.json.data) assert.equal(m.object, "model");
  });

  test("A/B alias: traffic split by weight, the chosen version in a header and a field, sticky per user", async () => {
    await call(s.url, "PUT", "/v1/aliases/support-bot", {
      body: {
        targets: [
          { adapter: "beta@1", weight: 1 },
          { adapter: "beta@2", weight: 1 },
        ],
      },
    });
    const seen = new Map<string, number>();
    for (let i = 0; i < 24; i++) {
      const r = await call(s.url, "POST", "/v1/completions", { body: completion("support-bot", PROMPTS[0], { max_tokens: 20 }) });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.alias, "support-bot");
      assert.equal(r.headers.get("x-lowrank-adapter"), r.json.adapter);
      assert.equal(r.headers.get("x-lowrank-alias"), "support-bot");
      assert.equal(r.json.choices[0].text, refs[r.json.adapter === "beta@1" ? "b1" : "b2"].get(PROMPTS[0]));
      seen.set(r.json.adapter, (seen.get(r.json.adapter) ?? 0) + 1);
    }
    assert.deepEqual([...seen.keys()].sort(), ["beta@1", "beta@2"], `both arms used: ${JSON.stringify([...seen])}`);
    const sticky = new Set<string>();
    for (let i = 0; i < 6; i++)
      sticky.add((await call(s.url, "POST", "/v1/completions", { body: completion("support-bot", "x", { max_tokens: 1, user: "alice" }) })).json.adapter);
    assert.equal(sticky.size, 1, "one user stays on one arm");
    await call(s.url, "PUT", "/v1/aliases/support-bot", {
      body: {
        targets: [
          { adapter: "beta@1", weight: 0 },
          { adapter: "beta@2", weight: 5 },
        ],
      },
    });
    for (let i = 0; i < 5; i++)
      assert.equal((await call(s.url, "POST", "/v1/completions", { body: completion("support-bot", "x", { max_tokens: 1 }) })).json.adapter, "beta@2");
    assert.equal((await call(s.url, "DELETE", "/v1/adapters/beta/versions/2")).status, 409, "an alias target cannot be deleted");
    assert.equal((await call(s.url, "DELETE", "/v1/aliases/support-bot")).status, 200);
  });

  test("stop sequences end the text before the stop string, streamed or not", async () => {
    const full = refs.base.get(PROMPTS[0]) as string; // ", there was a little girl named Lily. ..."
    const cut = full.indexOf("girl");
    assert.ok(cut > 0, full);
    const r = await call(s.url, "POST", "/v1/completions", { body: completion("stories260K-hf", PROMPTS[0], { max_tokens: 20, stop: ["girl", "zzz"] }) });
    assert.equal(r.json.choices[0].text, full.slice(0, cut));
    assert.equal(r.json.choices[0].finish_reason, "stop");
    const st = await call(s.url, "POST", "/v1/completions", { body: completion("stories260K-hf", PROMPTS[0], { max_tokens: 20, stop: "girl", stream: true }) });
    const chunks = parseSse(st.text)
      .filter((e) => e.data !== "[DONE]")
      .map((e) => JSON.parse(e.data));
    assert.equal(chunks.map((c) => c.choices[0].text).join(""), full.slice(0, cut));
  });

  test("the adapter cache evicts the least recently used adapter by bytes", async () => {
    const small = await startTestServer({ cacheBytes: 30_000 });
    try {
      for (const [name, dir] of [
        ["one", dirs.a1],
        ["two", dirs.c1],
        ["three", dirs.a1],
      ] as const)
        assert.equal((await upload(small.url, name, dir)).status, 201);
      for (const m of ["one", "two", "three"])
        assert.equal((await call(small.url, "POST", "/v1/completions", { body: completion(m, "Hi", { max_tokens: 2 }) })).status, 200);
      const cache = await call(small.url, "GET", "/v1/cache");
      const loaded = cache.json.loaded.map((a: { adapter: string }) => a.adapter);
      assert.ok(cache.json.used_bytes <= 30_000, JSON.stringify(cache.json));
      assert.ok(!loaded.includes("one@1") && loaded.includes("three@1"), `oldest evicted first: ${loaded}`);
      // An evicted adapter loads again on use and gives the same output.
      const again = await call(small.url, "POST", "/v1/completions", { body: completion("one", PROMPTS[2], { max_tokens: 20 }) });
      assert.equal(again.json.choices[0].text, refs.a1.get(PROMPTS[2]));
    } finally {
      await small.close();
    }
  });
});

describe("continuous batching bounds", { skip: NEED_MODEL }, () => {
  test("maxBatch and the KV budget bound a step; a request whose KV cache alone passes the budget is a 400 on max_tokens", async () => {
    // stories260K: 5 layers x 2 x 4 kv heads x head size 8 x 4 bytes = 1280 bytes per position.
    const s = await startTestServer({ maxBatch: 2, kvBudgetBytes: 100_000 });
    try {
      const big = await call(s.url, "POST", "/v1/completions", { body: completion("stories260K-hf", PROMPTS[0], { max_tokens: 200 }) });
      assert.equal(big.status, 400, big.text);
      assert.equal(big.json.error.field, "max_tokens");
      assert.match(big.json.error.message, /KV cache, more than the server's budget of 100000; lower max_tokens/);
      const ref = await reference(null, 12);
      const outs = await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          call(s.url, "POST", "/v1/completions", { body: completion("stories260K-hf", PROMPTS[i % PROMPTS.length], { max_tokens: 12 }) }),
        ),
      );
      outs.forEach((r, i) => {
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.choices[0].text, ref.get(PROMPTS[i % PROMPTS.length]));
      });
      const b = (await call(s.url, "GET", "/v1/cache")).json.batching;
      assert.ok(b.max_batch === 2, JSON.stringify(b));
    } finally {
      await s.close();
    }
  });
});
