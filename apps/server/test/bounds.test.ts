/**
 * Every resource bounded (issue 18): each failure a new user hit is reproduced here and now gets a
 * 4xx JSON error naming the client's field (or the documented behaviour), and the server still
 * answers afterwards. Uploads stream to disk; datasets are parsed in a worker; jobs are checked
 * against the memory plan and the queue is bounded.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { NEED_MODEL, type Res, type TestServer, call, completion, makeAdapter, startTestServer, tempDir, upload } from "./helpers.ts";

export function assertError(r: Res, status: number, field?: string | null, message?: RegExp): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.headers.get("content-type")?.split(";")[0], "application/json", r.text);
  assert.deepEqual(Object.keys(r.json.error).sort(), ["field", "message", "type"]);
  if (field !== undefined) assert.equal(r.json.error.field, field, r.json.error.message);
  if (message) assert.match(r.json.error.message, message);
  assert.doesNotMatch(r.json.error.message, /\/tmp\/|\/work\/|\/home\/|node_modules|\bat [\w.<>]+ \(/, "no server paths or stack frames");
}

/** The same safetensors bytes with element `index` of the first stored tensor replaced (f32). */
function poke(bytes: Uint8Array, value: number, index = 0): { bytes: Uint8Array; tensor: string } {
  const out = new Uint8Array(bytes);
  const n = Number(new DataView(out.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(out.subarray(8, 8 + n))) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const [tensor, info] = Object.entries(header).find(([k, v]) => k !== "__metadata__" && v.data_offsets[0] === 0)!;
  assert.equal(info.dtype, "F32");
  new DataView(out.buffer).setFloat32(8 + n + 4 * index, value, true);
  return { bytes: out, tensor };
}

describe("bounds", { skip: NEED_MODEL }, () => {
  let s: TestServer;
  let work: string;
  let adapter: string;

  const alive = async () => {
    assert.equal((await call(s.url, "GET", "/healthz", { key: null })).status, 200);
    assert.equal((await call(s.url, "POST", "/v1/completions", { body: completion("good", "Once", { max_tokens: 2 }) })).status, 200);
  };

  before(async () => {
    work = await tempDir("bounds");
    adapter = await makeAdapter(join(work, "good"), 3, { scale: 0.5 });
    s = await startTestServer({ maxQueuedJobs: 2, jobMemoryBytes: 256 << 20 });
    assert.equal((await upload(s.url, "good", adapter)).status, 201);
  });

  after(async () => {
    await s?.close();
    await rm(work, { recursive: true, force: true });
  });

  test("adapters with NaN, Inf or huge weights are refused at upload, naming the tensor", async () => {
    const weights = await readFile(join(adapter, "adapter_model.safetensors"));
    for (const [value, what] of [[NaN, /NaN/], [Infinity, /\+Inf/], [-Infinity, /-Inf/], [3e30, /3\.000e\+30/]] as const) {
      const { bytes, tensor } = poke(weights, value, 5);
      const r = await upload(s.url, "bad", adapter, { weights: bytes });
      assertError(r, 400, "adapter_model.safetensors", what);
      assert.ok(r.json.error.message.includes(`tensor ${tensor} has`), r.json.error.message);
      assert.match(r.json.error.message, /element 5/);
    }
    await alive();
  });

  test("absurd lora_alpha (1e308, NaN-like, alpha_pattern) is refused naming the field", async () => {
    const config = JSON.parse(await readFile(join(adapter, "adapter_config.json"), "utf8"));
    assertError(await upload(s.url, "bad", adapter, { config: JSON.stringify({ ...config, lora_alpha: 1e308 }) }), 400, "adapter_config.json.lora_alpha", /lora_alpha = 1e\+308/);
    assertError(await upload(s.url, "bad", adapter, { config: JSON.stringify({ ...config, lora_alpha: -1e6 }) }), 400, "adapter_config.json.lora_alpha");
    assertError(await upload(s.url, "bad", adapter, { config: JSON.stringify({ ...config, alpha_pattern: { q_proj: 1e9 } }) }), 400, "adapter_config.json.alpha_pattern");
    assert.equal((await call(s.url, "GET", "/v1/adapters/bad")).status, 404, "nothing was registered");
    await alive();
  });

  test("temperature 1e-40 is greedy (the same text as temperature 0), not a 500", async () => {
    const greedy = await call(s.url, "POST", "/v1/completions", { body: completion("good", "Once upon", { max_tokens: 8, temperature: 0 }) });
    assert.equal(greedy.status, 200, greedy.text);
    for (const t of [1e-40, 5e-324, 1e-4]) {
      const r = await call(s.url, "POST", "/v1/completions", { body: completion("good", "Once upon", { max_tokens: 8, temperature: t, seed: 7 }) });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.choices[0].text, greedy.json.choices[0].text, `temperature ${t}`);
    }
  });

  test("a 5,000-deep JSON field is a 400 naming it, in JSON bodies and in upload form fields", async () => {
    const deep = `${"[".repeat(5000)}${"]".repeat(5000)}`;
    const body = `{"adapter_name": "x", "data": "hi", "hyperparameters": {"a": ${deep}}}`;
    assertError(await call(s.url, "POST", "/v1/fine-tunes", { raw: body, headers: { "content-type": "application/json" } }), 400, "hyperparameters", /nested more than 32 levels/);
    assertError(await call(s.url, "POST", "/v1/completions", { raw: `{"model": "good", "prompt": "x", "stop": ${deep}}`, headers: { "content-type": "application/json" } }), 400, "stop");
    assertError(await upload(s.url, "bad", adapter, { extra: { hyperparameters: `{"a": ${deep}}` } }), 400, "hyperparameters.a", /nested/);
    await alive();
  });
});
