/** /openapi.json: OpenAPI 3.1, public, and in step with the routes the app really has. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createApp } from "../src/index.ts";
import { NEED_MODEL, call, startTestServer } from "./helpers.ts";

test("GET /openapi.json describes every route with its scope", { skip: NEED_MODEL }, async () => {
  const s = await startTestServer();
  try {
    const r = await call(s.url, "GET", "/openapi.json", { key: null });
    assert.equal(r.status, 200);
    const doc = r.json;
    assert.equal(doc.openapi, "3.1.0");
    assert.match(doc.info.description, /stories260K-hf/);
    const documented = new Set<string>();
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, { responses: object; security: unknown[] }>>)) {
      for (const [method, op] of Object.entries(ops)) {
        documented.add(`${method.toUpperCase()} ${path}`);
        assert.ok(Object.keys(op.responses).length > 0, `${method} ${path} has responses`);
      }
    }
    const app = createApp(s.ctx);
    const real = new Set(app.routes.filter((x) => x.method !== "ALL").map((x) => `${x.method} ${x.path.replace(/:(\w+)/g, "{$1}")}`));
    assert.deepEqual(
      [...real].filter((x) => !documented.has(x)),
      [],
      "routes missing from the document",
    );
    assert.deepEqual(
      [...documented].filter((x) => !real.has(x)),
      [],
      "documented routes that do not exist",
    );
    assert.ok(doc.components.schemas.Error.properties.error.required.includes("field"));
  } finally {
    await s.close();
  }
});
