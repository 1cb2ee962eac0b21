/**
 * downloadHfModel against a local HTTP server that mimics the Hub's API and resolve endpoints,
 * serving shared/data/models/stories260K-hf with sha256 ETags and Range support (127.0.0.1 only).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { noGrad, scope, tensor } from "@lowrank/tensor";
import { ChecksumError, HubError, type LlamaForCausalLM, downloadHfModel, hubSnapshotDir, loadHfModel } from "../src/node.ts";
import { noData, storiesHfDir } from "./helpers.ts";

const REPO = "lowrank-test/stories260K";
const skip = noData || (storiesHfDir && !existsSync(storiesHfDir) ? `${storiesHfDir} not found` : false);

interface Hooks {
  /** Drop the connection after half of this file, once. */
  dropHalfway?: string;
  /** Flip a byte of this file (ETag stays the true sha256). */
  corrupt?: string;
  /** Paths answered 401. */
  unauthorized?: Set<string>;
}
interface Seen {
  method: string;
  url: string;
  range?: string;
  auth?: string;
}

let server: Server;
let endpoint = "";
let cacheRoot = "";
const files = new Map<string, { bytes: Buffer; sha: string }>();
const hooks: Hooks = {};
const seen: Seen[] = [];

before(async () => {
  cacheRoot = await mkdtemp(join(tmpdir(), "lowrank-hub-"));
  if (skip) return;
  for (const name of await readdir(storiesHfDir as string)) {
    const bytes = await readFile(join(storiesHfDir as string, name));
    files.set(name, { bytes, sha: createHash("sha256").update(bytes).digest("hex") });
  }
  server = createServer(handle);
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  if (server) await new Promise<void>((ok) => server.close(() => ok()));
  await rm(cacheRoot, { recursive: true, force: true });
});

function handle(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? "/", "http://x");
  seen.push({ method: req.method ?? "", url: url.pathname, range: req.headers.range, auth: req.headers.authorization });
  if (hooks.unauthorized?.has(url.pathname)) {
    res.writeHead(401, { "content-type": "application/json" }).end('{"error":"Invalid credentials"}');
    return;
  }
  const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
  if (api) {
    if (api[1] !== REPO || decodeURIComponent(api[2]) !== "main") {
      res.writeHead(404, { "content-type": "application/json" }).end('{"error":"Repository not found"}');
      return;
    }
    const siblings = [...files.keys(), "README.md", ".gitattributes"].map((rfilename) => ({ rfilename }));
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ id: REPO, sha: "0".repeat(40), siblings }));
    return;
  }
  const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
  const f = m && m[1] === REPO && m[2] === "main" ? files.get(decodeURIComponent(m[3])) : undefined;
  if (!m || !f) {
    res.writeHead(404).end("Entry not found");
    return;
  }
  const name = decodeURIComponent(m[3]);
  let body = f.bytes;
  if (hooks.corrupt === name) {
    body = Buffer.from(body);
    body[body.length >> 1] ^= 0xff;
  }
  const etag = `"${f.sha}"`;
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
  if (range) {
    const start = Number(range[1]);
    if (start >= body.length) {
      res.writeHead(416, { "content-range": `bytes */${body.length}` }).end();
      return;
    }
    res.writeHead(206, {
      "content-length": body.length - start,
      "content-range": `bytes ${start}-${body.length - 1}/${body.length}`,
      etag,
      "x-linked-etag": etag,
      "accept-ranges": "bytes",
    });
    res.end(body.subarray(start));
    return;
  }
  res.writeHead(200, { "content-length": body.length, etag, "x-linked-etag": etag, "accept-ranges": "bytes" });
  if (hooks.dropHalfway === name) {
    hooks.dropHalfway = undefined;
    res.write(body.subarray(0, body.length >> 1), () => setTimeout(() => res.destroy(), 20));
    return;
  }
  res.end(body);
}

const downloads = (from: number) => seen.slice(from).filter((s) => s.url.includes("/resolve/"));
const ids = [1, 403, 407, 261, 378, 426];
const run = (m: LlamaForCausalLM) => noGrad(() => scope(() => Array.from(m.forward(tensor([ids], { dtype: "i32" })).readSync() as Float32Array)));

test("download, then the same logits as the local directory; a second call is a cache hit", { skip }, async () => {
  const cacheDir = join(cacheRoot, "fresh");
  const progress: number[] = [];
  const from = seen.length;
  const dir = await downloadHfModel(REPO, { cacheDir, endpoint, token: "hf_test", onProgress: (p) => progress.push(p.loaded) });
  assert.equal(dir, await hubSnapshotDir(cacheDir, REPO, "main"));
  assert.equal(dir, join(cacheDir, "models--lowrank-test--stories260K", "snapshots", "main"));
  assert.deepEqual((await readdir(dir)).sort(), [...files.keys()].sort(), "README.md and .gitattributes are not fetched");
  assert.equal(downloads(from).length, files.size);
  assert.ok(seen.slice(from).every((s) => s.auth === "Bearer hf_test"));
  assert.ok(progress.includes(files.get("model.safetensors")?.bytes.length as number));
  const [a, b] = await Promise.all([loadHfModel(dir), loadHfModel(storiesHfDir as string)]);
  assert.deepEqual(run(a), run(b));
  a.dispose();
  b.dispose();

  const again = seen.length;
  const cached: string[] = [];
  assert.equal(await downloadHfModel(REPO, { cacheDir, endpoint, onCached: (f) => cached.push(f) }), dir);
  assert.equal(downloads(again).length, 0, "no file downloads on a cache hit");
  assert.equal(cached.length, files.size);
});

test("an interrupted download resumes with a Range request and checksums", { skip }, async () => {
  const cacheDir = join(cacheRoot, "resume");
  hooks.dropHalfway = "model.safetensors";
  await assert.rejects(downloadHfModel(REPO, { cacheDir, endpoint }), (e: Error) => {
    assert.ok(e instanceof HubError, String(e));
    assert.match(e.message, /resolve\/main\/model\.safetensors: download interrupted/);
    return true;
  });
  const snap = await hubSnapshotDir(cacheDir, REPO);
  const partial = (await stat(join(snap, "model.safetensors.incomplete"))).size;
  const size = files.get("model.safetensors")?.bytes.length as number;
  assert.ok(partial > 0 && partial < size, `partial ${partial} of ${size}`);
  assert.ok(!existsSync(join(snap, "model.safetensors")));

  const from = seen.length;
  await downloadHfModel(REPO, { cacheDir, endpoint });
  const ranged = downloads(from).filter((s) => s.url.endsWith("/model.safetensors"));
  assert.deepEqual(
    ranged.map((s) => s.range),
    [`bytes=${partial}-`],
  );
  const bytes = await readFile(join(snap, "model.safetensors"));
  assert.equal(createHash("sha256").update(bytes).digest("hex"), files.get("model.safetensors")?.sha);
  assert.ok(!existsSync(join(snap, "model.safetensors.incomplete")));
});

test("a corrupted byte fails the checksum, naming the file and both hashes, and leaves nothing", { skip }, async () => {
  const cacheDir = join(cacheRoot, "corrupt");
  hooks.corrupt = "model.safetensors";
  try {
    await assert.rejects(downloadHfModel(REPO, { cacheDir, endpoint }), (e: Error) => {
      assert.ok(e instanceof ChecksumError, String(e));
      assert.equal(e.file, "model.safetensors");
      assert.equal(e.expected, files.get("model.safetensors")?.sha);
      assert.match(e.message, /model\.safetensors: sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}/);
      assert.ok(e.message.includes(e.expected) && e.message.includes(e.actual) && e.actual !== e.expected);
      return true;
    });
  } finally {
    hooks.corrupt = undefined;
  }
  const snap = await hubSnapshotDir(cacheDir, REPO);
  assert.ok(!existsSync(join(snap, "model.safetensors")));
  assert.ok(!existsSync(join(snap, "model.safetensors.incomplete")));
});

test("404 and 401 name the URL; 401 mentions a token", { skip }, async () => {
  const cacheDir = join(cacheRoot, "errors");
  await assert.rejects(downloadHfModel("nobody/nothing", { cacheDir, endpoint }), (e: Error) => {
    assert.ok(e instanceof HubError && e.status === 404);
    assert.ok(e.message.includes(`${endpoint}/api/models/nobody/nothing/revision/main`), e.message);
    assert.match(e.message, /not found/);
    return true;
  });
  await assert.rejects(downloadHfModel(REPO, { cacheDir, endpoint, files: ["config.json", "missing.bin"] }), /missing\.bin/);
  const gated = `/${REPO}/resolve/main/config.json`;
  hooks.unauthorized = new Set([gated]);
  try {
    await assert.rejects(downloadHfModel(REPO, { cacheDir, endpoint }), (e: Error) => {
      assert.ok(e instanceof HubError && e.status === 401);
      assert.ok(e.message.includes(`${endpoint}${gated}`), e.message);
      assert.match(e.message, /gated or private.*token/);
      return true;
    });
  } finally {
    hooks.unauthorized = undefined;
  }
});

test("a network error names the URL", async () => {
  const dead = createServer();
  await new Promise<void>((ok) => dead.listen(0, "127.0.0.1", ok));
  const port = (dead.address() as AddressInfo).port;
  await new Promise<void>((ok) => dead.close(() => ok()));
  await assert.rejects(downloadHfModel(REPO, { cacheDir: join(cacheRoot, "net"), endpoint: `http://127.0.0.1:${port}` }), (e: Error) => {
    assert.ok(e instanceof HubError && e.status === 0);
    assert.ok(e.message.startsWith(`http://127.0.0.1:${port}/api/models/${REPO}/revision/main`), e.message);
    assert.match(e.message, /network error/);
    return true;
  });
  await assert.rejects(downloadHfModel("../etc", { cacheDir: cacheRoot }), /not a Hub repository id/);
});
