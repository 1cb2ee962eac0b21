/**
 * The registry: SQLite storage, versioning, rollback, delete, atomicity and crash leftovers
 * (directly), then the same over HTTP plus download (tar of PEFT files) and merged export.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { generateIds, loadHfModel, loadTokenizer } from "@lowrank/nn/node";
import { openSafetensors } from "@lowrank/safetensors/node";
import { type Db, Registry, homePaths, openDb } from "../src/index.ts";
import { ensureHome } from "../src/home.ts";
import { sha256File } from "../src/registry/files.ts";
import { migrate } from "../src/storage/schema.ts";
import { NEED_MODEL, type TestServer, call, completion, makeAdapter, startTestServer, tempDir, upload } from "./helpers.ts";

const HASH = `sha256:${"0".repeat(64)}`;

async function stage(reg: Registry, content: string): Promise<string> {
  const dir = reg.stagingDir("t");
  await writeFile(join(dir, "adapter_config.json"), `{"r": 4, "note": ${JSON.stringify(content)}}`);
  await writeFile(join(dir, "adapter_model.safetensors"), content);
  return dir;
}

/** Parse a ustar archive: name -> bytes (regular files only), checking every header checksum. */
function untar(buf: Uint8Array): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  const dec = new TextDecoder();
  const field = (h: Uint8Array, o: number, n: number) => dec.decode(h.subarray(o, o + n)).replace(/\0.*$/s, "");
  for (let off = 0; off + 512 <= buf.length; ) {
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i];
    assert.equal(parseInt(field(h, 148, 8).trim(), 8), sum, "header checksum");
    assert.equal(field(h, 257, 6), "ustar");
    const prefix = field(h, 345, 155);
    const name = (prefix ? `${prefix}/` : "") + field(h, 0, 100);
    const size = parseInt(field(h, 124, 12).trim() || "0", 8);
    if (String.fromCharCode(h[156]) === "0") out.set(name, buf.slice(off + 512, off + 512 + size));
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

describe("registry (storage)", () => {
  let root: string;
  let db: Db;
  let reg: Registry;

  before(async () => {
    root = await tempDir("reg");
    const home = await ensureHome(root);
    db = await openDb(home.db);
    migrate(db);
    reg = new Registry(db, home);
  });

  after(async () => {
    db.close();
    await rm(root, { recursive: true, force: true });
  });

  test("a real SQLite file under home, driver picked for this runtime", () => {
    assert.equal(db.driver, "better-sqlite3");
    assert.ok(existsSync(homePaths(root).db));
    assert.equal(db.get<{ user_version: number }>("PRAGMA user_version")?.user_version, 2);
    assert.equal(migrate(db), 2, "migrating twice is a no-op");
  });

  test("versions count up, the newest is current, files move into adapters/<name>/v<n>", async () => {
    for (const c of ["one", "two", "three"]) {
      await reg.addVersion({ name: "bot", stagedDir: await stage(reg, c), base_model: "m", base_model_hash: HASH, source: "test", hyperparameters: { c } });
    }
    const vs = reg.listVersions("bot");
    assert.deepEqual(
      vs.map((v) => v.version),
      [1, 2, 3],
    );
    assert.deepEqual(
      vs.map((v) => v.current),
      [false, false, true],
    );
    assert.equal(vs[1].sha256, await sha256File(join(reg.versionDir("bot", 2), "adapter_model.safetensors")));
    assert.equal(
      vs[1].size_bytes,
      vs[1].files.reduce((n, f) => n + f.size, 0),
    );
    assert.deepEqual(vs[2].hyperparameters, { c: "three" });
    assert.deepEqual(await readdir(join(root, "tmp")), [], "staging emptied");
  });

  test("rollback: to the previous version, to a named one, and with delete in the same call", async () => {
    let r = await reg.rollback("bot");
    assert.equal(r.current.version, 2);
    assert.equal(r.previous, 3);
    r = await reg.rollback("bot", { to: 3 });
    assert.equal(r.current.version, 3);
    r = await reg.rollback("bot", { deleteCurrent: true });
    assert.equal(r.current.version, 2);
    assert.equal(r.deleted?.ref, "bot@3");
    assert.ok(!existsSync(reg.versionDir("bot", 3)));
    await assert.rejects(reg.rollback("bot", { to: 3 }), /no version 3/);
    // Version numbers are never reused.
    const v = await reg.addVersion({ name: "bot", stagedDir: await stage(reg, "four"), base_model: "m", base_model_hash: HASH, source: "test" });
    assert.equal(v.version, 4);
  });

  test("delete: current moves to the newest remaining; the last one removes the name", async () => {
    await reg.deleteVersion("bot", 4);
    assert.equal(reg.getVersion("bot")?.version, 2);
    await reg.deleteVersion("bot", 2);
    await reg.deleteVersion("bot", 1);
    assert.equal(reg.hasAdapter("bot"), false);
    assert.ok(!existsSync(join(root, "adapters", "bot")));
    await assert.rejects(reg.deleteVersion("bot", 1), /not found/);
  });

  test("a failed move rolls the row back; crash leftovers are swept at startup", async () => {
    // The move inside the transaction fails (a file sits where the adapter's directory goes).
    await writeFile(join(root, "adapters", "ghost"), "in the way");
    const staged = await stage(reg, "x");
    await assert.rejects(reg.addVersion({ name: "ghost", stagedDir: staged, base_model: "m", base_model_hash: HASH, source: "t" }));
    assert.equal(reg.hasAdapter("ghost"), false, "no row without files");
    assert.ok(existsSync(staged), "the staged files are left for the caller to clean up");
    assert.equal(db.get<{ n: number }>("SELECT COUNT(*) AS n FROM adapter_versions")?.n, 0);
    // Leftovers of a crash: a version directory whose commit was lost, a stray staging dir.
    await mkdir(join(root, "adapters", "orphan", "v1"), { recursive: true });
    await mkdir(join(root, "adapters", "bot2", "v7"), { recursive: true });
    reg.stagingDir("stray");
    const { removed } = reg.sweep();
    assert.ok(removed.some((p) => p.endsWith("orphan")));
    assert.ok(!existsSync(join(root, "adapters", "ghost")) && !existsSync(join(root, "adapters", "bot2")));
    assert.ok(!existsSync(join(root, "adapters", "orphan")));
    assert.deepEqual(await readdir(join(root, "tmp")), []);
  });

  for (const [runtime, driver] of [
    ["bun", "bun:sqlite"],
    ["deno", "node:sqlite"],
  ] as const) {
    const bin = fileURLToPath(new URL(`../../../node_modules/.bin/${runtime}`, import.meta.url));
    test(`the same registry on ${runtime} uses ${driver}`, { skip: existsSync(bin) ? false : `${runtime} is not installed` }, () => {
      const script = fileURLToPath(new URL("./driver-check.ts", import.meta.url));
      const r = spawnSync(bin, runtime === "bun" ? [script] : ["run", "-A", "--no-check", script], { encoding: "utf8", timeout: 60_000 });
      assert.equal(r.status, 0, r.stderr);
      const line = r.stdout.trim().split("\n").pop() as string;
      assert.deepEqual(JSON.parse(line), { driver, current: "bot@1", deleted: "bot@2", versions: 1, rolledBack: true });
    });
  }

  test("names are validated before any file is touched", async () => {
    for (const name of ["../x", "a/b", "", ".x", "X", "a".repeat(65)]) {
      await assert.rejects(reg.addVersion({ name, stagedDir: await stage(reg, "n"), base_model: "m", base_model_hash: HASH, source: "t" }), /not a valid name/);
    }
    assert.deepEqual(await readdir(join(root, "adapters")), []);
  });
});

describe("registry over HTTP", { skip: NEED_MODEL }, () => {
  let s: TestServer;
  let work: string;
  const dirs: string[] = [];

  before(async () => {
    work = await tempDir("reghttp");
    for (let i = 0; i < 3; i++) dirs.push(await makeAdapter(join(work, `v${i}`), 100 + i, { scale: 0.5 }));
    s = await startTestServer();
  });

  after(async () => {
    await s?.close();
    await rm(work, { recursive: true, force: true });
  });

  const text = async (model: string) =>
    (await call(s.url, "POST", "/v1/completions", { body: completion(model, "Once upon a time", { max_tokens: 16 }) })).json;

  test("upload three versions; name@version and the current name route to them", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await upload(s.url, "helper", dirs[i], {
        extra: { description: `v${i + 1}`, eval_metrics: JSON.stringify({ loss: 1 - i / 10 }), dataset_hash: "a".repeat(64) },
      });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.version, i + 1);
      assert.equal(r.json.base_model, "stories260K-hf");
      assert.match(r.json.base_model_hash, /^sha256:[0-9a-f]{64}$/);
      assert.equal(r.json.dataset_hash, `sha256:${"a".repeat(64)}`);
      assert.deepEqual(r.json.eval_metrics, { loss: 1 - i / 10 });
      assert.equal(r.json.hyperparameters.r, 4);
      assert.equal(r.json.sha256, await sha256File(join(dirs[i], "adapter_model.safetensors")));
    }
    const cur = await text("helper");
    assert.equal(cur.adapter, "helper@3");
    assert.equal((await text("helper@1")).adapter, "helper@1");
    assert.notEqual((await text("helper@1")).choices[0].text, cur.choices[0].text);
    const list = await call(s.url, "GET", "/v1/adapters/helper");
    assert.equal(list.json.current_version, 3);
    assert.equal(list.json.versions.length, 3);
  });

  test("rollback in one call, then roll forward; delete with rollback; delete one version", async () => {
    const v3text = (await text("helper@3")).choices[0].text;
    const v2text = (await text("helper@2")).choices[0].text;
    let r = await call(s.url, "POST", "/v1/adapters/helper/rollback");
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.current.version, 2);
    assert.equal(r.json.previous_version, 3);
    const now = await text("helper");
    assert.equal(now.adapter, "helper@2");
    assert.equal(now.choices[0].text, v2text);
    r = await call(s.url, "POST", "/v1/adapters/helper/rollback", { body: { to: 3 } });
    assert.equal(r.json.current.version, 3);
    assert.equal((await text("helper")).choices[0].text, v3text);
    r = await call(s.url, "POST", "/v1/adapters/helper/rollback", { body: { delete: true } });
    assert.equal(r.json.deleted, "helper@3");
    assert.equal(r.json.current.version, 2);
    assert.equal((await call(s.url, "GET", "/v1/adapters/helper/versions/3")).status, 404);
    assert.equal((await call(s.url, "POST", "/v1/completions", { body: completion("helper@3", "x") })).status, 404);
    r = await call(s.url, "DELETE", "/v1/adapters/helper/versions/1");
    assert.equal(r.status, 200);
    assert.equal(r.json.current_version, 2);
    assert.deepEqual(
      (await call(s.url, "GET", "/v1/adapters/helper")).json.versions.map((v: { version: number }) => v.version),
      [2],
    );
    r = await call(s.url, "POST", "/v1/adapters/helper/rollback");
    assert.equal(r.status, 409, "nothing older to roll back to");
    assert.equal(r.json.error.type, "conflict_error");
  });

  test("download: a ustar archive of the PEFT files, byte-identical, readable by tar", async () => {
    const res = await fetch(`${s.url}/v1/adapters/helper/versions/2/download`, {
      headers: { authorization: `Bearer ${(await import("./helpers.ts")).ADMIN}` },
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/x-tar");
    const buf = new Uint8Array(await res.arrayBuffer());
    assert.equal(Number(res.headers.get("content-length")), buf.length);
    const files = untar(buf);
    assert.deepEqual([...files.keys()].sort(), ["helper-v2/adapter_config.json", "helper-v2/adapter_model.safetensors", "helper-v2/lowrank.json"]);
    assert.deepEqual(files.get("helper-v2/adapter_model.safetensors"), new Uint8Array(await readFile(join(dirs[1], "adapter_model.safetensors"))));
    assert.equal(JSON.parse(new TextDecoder().decode(files.get("helper-v2/lowrank.json"))).ref, "helper@2");
    const out = join(work, "untarred");
    await mkdir(out);
    await writeFile(join(out, "a.tar"), buf);
    const tar = spawnSync("tar", ["-xf", "a.tar"], { cwd: out });
    if (tar.error) return; // no tar binary here; the parser above checked the format
    assert.equal(tar.status, 0, String(tar.stderr));
    const f = await openSafetensors(join(out, "helper-v2", "adapter_model.safetensors"));
    assert.ok(f.names.length > 0);
    await f.close();
  });

  test("export: the merged model generates what base + adapter generate", async () => {
    const res = await fetch(`${s.url}/v1/adapters/helper/versions/2/export`, {
      method: "POST",
      headers: { authorization: `Bearer ${(await import("./helpers.ts")).ADMIN}` },
    });
    assert.equal(res.status, 200, await res.clone().text());
    const files = untar(new Uint8Array(await res.arrayBuffer()));
    const root = "stories260K-hf-helper-v2-merged";
    assert.ok(files.has(`${root}/config.json`) && files.has(`${root}/model.safetensors`), [...files.keys()].join(", "));
    const dir = join(work, "merged");
    await mkdir(dir);
    for (const [name, bytes] of files) await writeFile(join(dir, name.slice(root.length + 1)), bytes);
    const backend = createCpuBackend();
    const model = await loadHfModel(dir, { backend });
    const tok = await loadTokenizer(dir);
    const ids = await generateIds(model, tok.encode("Once upon a time"), { maxNewTokens: 16, stopTokens: [2] });
    model.dispose();
    backend.dispose();
    assert.equal(tok.decode(ids), (await text("helper@2")).choices[0].text);
    const leftovers = await readdir(join(s.home.root, "tmp"));
    assert.deepEqual(leftovers, [], "the export's temporary directory is removed");
  });

  test("deleting the adapter removes its files and its models", async () => {
    const r = await call(s.url, "DELETE", "/v1/adapters/helper");
    assert.equal(r.status, 200);
    assert.deepEqual(r.json.versions, ["helper@2"]);
    assert.ok(!existsSync(join(s.home.root, "adapters", "helper")));
    const models = (await call(s.url, "GET", "/v1/models")).json.data.map((m: { id: string }) => m.id);
    assert.deepEqual(models, ["stories260K-hf"]);
    assert.equal((await call(s.url, "DELETE", "/v1/adapters/helper")).status, 404);
  });
});
