/**
 * Safety over real HTTP: keys and scopes (401/403), bad inputs (malformed JSON, wrong types, huge
 * bodies, path traversal names, corrupt safetensors) get 4xx with a clear JSON body and change
 * nothing, and per-key concurrency limits.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { ADMIN, NEED_MODEL, type Res, type TestServer, call, completion, makeAdapter, startTestServer, tempDir, upload } from "./helpers.ts";

function assertError(r: Res, status: number, type: string, field?: string | null, message?: RegExp): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.headers.get("content-type")?.split(";")[0], "application/json");
  assert.deepEqual(Object.keys(r.json), ["error"]);
  assert.deepEqual(Object.keys(r.json.error).sort(), ["field", "message", "type"]);
  assert.equal(r.json.error.type, type);
  assert.equal(typeof r.json.error.message, "string");
  assert.ok(r.json.error.message.length > 10, r.json.error.message);
  if (field !== undefined) assert.equal(r.json.error.field, field, r.json.error.message);
  if (message) assert.match(r.json.error.message, message);
}

/** Everything under home that the registry owns, as relative paths. */
async function snapshot(home: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, rel: string) => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(dir, e.name), r);
      else if (!e.name.startsWith("registry.db")) out.push(r);
    }
  };
  await walk(home, "");
  return out.sort();
}

describe("safety", { skip: NEED_MODEL }, () => {
  let s: TestServer;
  let work: string;
  let adapter: string;
  const keys: Record<string, string> = {};

  before(async () => {
    work = await tempDir("safety");
    adapter = await makeAdapter(join(work, "good"), 5, { scale: 0.5 });
    s = await startTestServer({ limits: { maxBodyBytes: 64 * 1024, maxUploadBytes: 512 * 1024 } });
    assert.equal((await upload(s.url, "good", adapter)).status, 201);
    for (const scope of ["read", "train", "admin"]) {
      const r = await call(s.url, "POST", "/v1/keys", { body: { name: `${scope}-key`, scope, max_concurrency: scope === "read" ? 1 : 8 } });
      assert.equal(r.status, 201, r.text);
      assert.match(r.json.key, /^lrk-/);
      keys[scope] = r.json.key;
    }
  });

  after(async () => {
    await s?.close();
    await rm(work, { recursive: true, force: true });
  });

  test("401 without a valid key; /openapi.json and /healthz are public", async () => {
    assertError(await call(s.url, "GET", "/v1/models", { key: null }), 401, "authentication_error", null, /missing API key/);
    assertError(await call(s.url, "GET", "/v1/models", { key: "lrk-not-a-real-key" }), 401, "authentication_error", null, /invalid/);
    assertError(await call(s.url, "POST", "/v1/completions", { key: null, body: completion("good", "x") }), 401, "authentication_error");
    const basic = await call(s.url, "GET", "/v1/models", { key: null, headers: { authorization: "Basic dXNlcjpwYXNz" } });
    assertError(basic, 401, "authentication_error", null, /Bearer/);
    assert.equal(basic.headers.get("www-authenticate"), 'Bearer realm="lowrank"');
    assert.equal((await call(s.url, "GET", "/openapi.json", { key: null })).status, 200);
    assert.equal((await call(s.url, "GET", "/healthz", { key: null })).status, 200);
  });

  test("403 by scope: read < train < admin", async () => {
    assert.equal((await call(s.url, "POST", "/v1/completions", { key: keys.read, body: completion("good", "Hi", { max_tokens: 2 }) })).status, 200);
    assertError(
      await call(s.url, "POST", "/v1/fine-tunes", { key: keys.read, body: { adapter_name: "x", data: "hello" } }),
      403,
      "permission_error",
      null,
      /needs 'train'/,
    );
    assertError(await upload(s.url, "other", adapter, { key: keys.read }), 403, "permission_error");
    assert.equal((await upload(s.url, "other", adapter, { key: keys.train })).status, 201);
    assertError(await call(s.url, "DELETE", "/v1/adapters/other", { key: keys.train }), 403, "permission_error", null, /needs 'admin'/);
    assertError(await call(s.url, "POST", "/v1/keys", { key: keys.train, body: { name: "n" } }), 403, "permission_error");
    assertError(await call(s.url, "PUT", "/v1/aliases/ab", { key: keys.train, body: { targets: [{ adapter: "good" }] } }), 403, "permission_error");
    assert.equal((await call(s.url, "DELETE", "/v1/adapters/other", { key: keys.admin })).status, 200);
    // A revoked key is a 401.
    const k = await call(s.url, "POST", "/v1/keys", { body: { name: "temp", scope: "read" } });
    assert.equal((await call(s.url, "GET", "/v1/models", { key: k.json.key })).status, 200);
    assert.equal((await call(s.url, "DELETE", `/v1/keys/${k.json.id}`)).status, 200);
    assertError(await call(s.url, "GET", "/v1/models", { key: k.json.key }), 401, "authentication_error");
    const listed = await call(s.url, "GET", "/v1/keys");
    assert.ok(!listed.text.includes(keys.read), "key secrets are never listed");
  });

  test("bad JSON inputs get 400 naming the field, 404 for unknown models, 413 for huge bodies", async () => {
    const raw = (body: string) => call(s.url, "POST", "/v1/completions", { raw: body, headers: { "content-type": "application/json" } });
    assertError(await raw('{"model": '), 400, "invalid_request_error", null, /malformed JSON/);
    assertError(await raw(""), 400, "invalid_request_error", null, /empty/);
    assertError(await raw("[1, 2]"), 400, "invalid_request_error", null, /JSON object/);
    const post = (body: unknown, path = "/v1/completions") => call(s.url, "POST", path, { body });
    assertError(await post({ prompt: "x" }), 400, "invalid_request_error", "model");
    assertError(await post({ model: 42, prompt: "x" }), 400, "invalid_request_error", "model", /string/);
    assertError(await post({ model: "good", prompt: 7 }), 400, "invalid_request_error", "prompt");
    assertError(await post(completion("good", "x", { max_tokens: "5" })), 400, "invalid_request_error", "max_tokens", /number/);
    assertError(await post(completion("good", "x", { max_tokens: 1.5 })), 400, "invalid_request_error", "max_tokens", /integer/);
    assertError(await post(completion("good", "x", { max_tokens: 10 ** 9 })), 400, "invalid_request_error", "max_tokens");
    assertError(await post(completion("good", "x", { temperature: -1 })), 400, "invalid_request_error", "temperature");
    assertError(await post(completion("good", "x", { n: 3 })), 400, "invalid_request_error", "n");
    assertError(await post(completion("good", "x", { stream: "yes" })), 400, "invalid_request_error", "stream");
    assertError(await post(completion("good", "x", { stop: [1] })), 400, "invalid_request_error", "stop[0]");
    assertError(await post(completion("good", "x".repeat(4000))), 400, "invalid_request_error", "prompt", /context/);
    assertError(
      await post({ model: "good", messages: [{ role: "wizard", content: "x" }] }, "/v1/chat/completions"),
      400,
      "invalid_request_error",
      "messages[0].role",
    );
    assertError(
      await post({ model: "good", messages: [{ role: "user", content: { a: 1 } }] }, "/v1/chat/completions"),
      400,
      "invalid_request_error",
      "messages[0].content",
    );
    assertError(await post({ model: "good", messages: "hi" }, "/v1/chat/completions"), 400, "invalid_request_error", "messages");
    assertError(await post(completion("nope", "x")), 404, "not_found_error", "model", /not found/);
    assertError(await post(completion("good@9", "x")), 404, "not_found_error", "model", /no version 9/);
    assertError(await post(completion("other-base:good", "x")), 404, "not_found_error", "model", /serves base model/);
    assertError(await post(completion("../../etc/passwd", "x")), 400, "invalid_request_error", "model", /not a valid name/);
    assertError(await post(completion("good", "x".repeat(100 * 1024))), 413, "payload_too_large", null, /larger than/);
    assertError(await post({ adapter_name: "ok", data: "x", rank: 0 }, "/v1/fine-tunes"), 400, "invalid_request_error", "rank");
    assertError(await post({ adapter_name: "ok", data: "x", lr: 1 }, "/v1/fine-tunes"), 400, "invalid_request_error", "lr", /unknown field/);
    assertError(await post({ adapter_name: "ok", data: "x", method: "full" }, "/v1/fine-tunes"), 400, "invalid_request_error", "method");
    assertError(await post({ adapter_name: "ok", data: "x", dataset: "y" }, "/v1/fine-tunes"), 400, "invalid_request_error");
    assertError(await post({ adapter_name: "Bad/Name", data: "x" }, "/v1/fine-tunes"), 400, "invalid_request_error", "adapter_name");
    assertError(
      await call(s.url, "PUT", "/v1/aliases/ab", { body: { targets: [{ adapter: "good", weight: "1" }] } }),
      400,
      "invalid_request_error",
      "targets[0].weight",
    );
    assertError(await call(s.url, "PUT", "/v1/aliases/ab", { body: { targets: [{ adapter: "missing" }] } }), 404, "not_found_error", "targets[0].adapter");
    assertError(await call(s.url, "GET", "/v1/nothing-here"), 404, "not_found_error");
  });

  test("upload checks: traversal names, corrupt safetensors, mismatched shapes, bad config; nothing changes", async () => {
    const before = await snapshot(s.home.root);
    const listBefore = (await call(s.url, "GET", "/v1/adapters")).text;
    const weights = await readFile(join(adapter, "adapter_model.safetensors"));
    for (const name of ["../evil", "..", "a/b", ".hidden", "UPPER", "x".repeat(65), "", "a\\b", "a@1", "base:x"]) {
      assertError(await upload(s.url, name, adapter), 400, "invalid_request_error", "name");
    }
    assertError(await call(s.url, "GET", "/v1/adapters/..%2F..%2Fetc"), 400, "invalid_request_error", "name");
    assertError(await call(s.url, "GET", "/v1/adapters/good/versions/..%2F1"), 400, "invalid_request_error", "version");
    assertError(await call(s.url, "GET", "/v1/adapters/a%00b/versions/1/download"), 400, "invalid_request_error", "name");
    const corrupt: [string, Uint8Array, RegExp][] = [
      ["truncated", weights.subarray(0, weights.length - 100), /safetensors/],
      ["garbage header length", Uint8Array.from([255, 255, 255, 255, 255, 255, 0, 0, ...weights.subarray(8)]), /safetensors/],
      ["not JSON", Uint8Array.from([...new Uint8Array(new BigUint64Array([4n]).buffer), 123, 123, 123, 123]), /safetensors/],
      ["empty", new Uint8Array(0), /safetensors/],
    ];
    for (const [what, bytes, msg] of corrupt) {
      assertError(await upload(s.url, "broken", adapter, { weights: bytes }), 400, "invalid_request_error", "adapter_model.safetensors", msg);
      void what;
    }
    // A valid file with another rank than its config says: the trial load against the base refuses it.
    const r8 = await makeAdapter(join(work, "r8"), 9, { r: 8 });
    const config = JSON.parse(await readFile(join(adapter, "adapter_config.json"), "utf8"));
    assertError(
      await upload(s.url, "broken", adapter, { weights: await readFile(join(r8, "adapter_model.safetensors")), config: JSON.stringify(config) }),
      400,
      "invalid_request_error",
      "adapter_model.safetensors",
      /does not fit/,
    );
    assertError(await upload(s.url, "broken", adapter, { config: "{not json" }), 400, "invalid_request_error", "adapter_config.json");
    assertError(await upload(s.url, "broken", adapter, { config: JSON.stringify({ ...config, r: -1 }) }), 400, "invalid_request_error", "adapter_config.json");
    assertError(await upload(s.url, "broken", adapter, { extra: { hyperparameters: "[1" } }), 400, "invalid_request_error", "hyperparameters");
    assertError(await upload(s.url, "broken", adapter, { weights: new Uint8Array(600 * 1024) }), 413, "payload_too_large");
    assertError(await call(s.url, "POST", "/v1/adapters", { body: { name: "x" } }), 415, "invalid_request_error", null, /multipart/);
    assert.deepEqual(await snapshot(s.home.root), before, "no files were added or removed");
    assert.equal((await call(s.url, "GET", "/v1/adapters")).text, listBefore, "the registry is unchanged");
    // The model still serves the good adapter exactly as before.
    assert.equal((await call(s.url, "POST", "/v1/completions", { body: completion("good", "Hi", { max_tokens: 4 }) })).status, 200);
  });

  test("per-key concurrency: a second request over the key's limit gets 429 while a stream is open", async () => {
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${keys.read}` },
      body: JSON.stringify(completion("good", "Once upon a time", { max_tokens: 300, stream: true })),
    });
    assert.equal(res.status, 200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // the stream is open: the request is in flight
    assertError(await call(s.url, "GET", "/v1/models", { key: keys.read }), 429, "rate_limit_error", null, /limit 1/);
    assert.equal((await call(s.url, "GET", "/v1/models", { key: keys.train })).status, 200, "other keys are not affected");
    await reader.cancel();
    for (let i = 0; i < 50; i++) {
      if ((await call(s.url, "GET", "/v1/models", { key: keys.read })).status === 200) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.fail("the slot was not released after the client went away");
  });

  test("the admin key from LOWRANK_API_KEY works; admin.key is not written then", async () => {
    assert.equal((await call(s.url, "GET", "/v1/keys", { key: ADMIN })).status, 200);
    assert.ok(!(await readdir(s.home.root)).includes("admin.key"));
  });
});
