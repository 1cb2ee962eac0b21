/** `lowrank serve`: usage errors, the generated admin key (0600, printed once), 401 without a key, clean SIGTERM. */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { run } from "../src/cli.ts";
import { parsePort } from "../src/serve.ts";
import { resolveModelDir } from "../src/data-dir.ts";

const CLI_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const BIN = join(CLI_DIR, "bin", "lowrank.mjs");
const DATA = process.env.LOWRANK_DATA_DIR ? resolve(process.env.LOWRANK_DATA_DIR) : resolve(CLI_DIR, "../../../shared/data");
const MODEL = join(DATA, "models", "stories260K-hf");
const HAVE_MODEL = existsSync(join(MODEL, "config.json"));

async function quiet<T>(fn: () => Promise<T>): Promise<{ value: T; err: string }> {
  const orig = console.error;
  let err = "";
  console.error = (...a: unknown[]) => void (err += `${a.join(" ")}\n`);
  try {
    return { value: await fn(), err };
  } finally {
    console.error = orig;
  }
}

test("serve: usage errors exit 2 and say what is wrong; a missing model exits 1", async () => {
  let r = await quiet(() => run(["serve"], {}));
  assert.equal(r.value, 2);
  assert.match(r.err, /serve needs --model/);
  r = await quiet(() => run(["serve", "--model", "/nonexistent/model"], {}));
  assert.equal(r.value, 1); // not a usage error: the same local failure as every command's
  assert.match(r.err, /no config\.json/);
  r = await quiet(() => run(["serve", "--model", "x", "--bogus"], {}));
  assert.equal(r.value, 2);
  assert.throws(() => parsePort("http"), /--port http/);
  assert.throws(() => parsePort("70000"), /0-65535/);
  assert.equal(parsePort(undefined), 8080);
  assert.equal(parsePort("0"), 0);
});

test("serve: --model also accepts a name under the data directory", { skip: HAVE_MODEL ? false : "stories260K-hf not found" }, async () => {
  assert.equal(await resolveModelDir("stories260K-hf", DATA, process.cwd(), {}), MODEL);
});

function serve(home: string, env: Record<string, string | undefined>): { child: ChildProcess; output: () => string; url: Promise<string> } {
  const child = spawn(process.execPath, [BIN, "serve", "--model", MODEL, "--port", "0", "--home", home, "--backend", "cpu"], {
    env: { ...process.env, LOWRANK_API_KEY: undefined, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d));
  child.stderr?.on("data", (d: Buffer) => (out += d));
  const url = new Promise<string>((done, fail) => {
    const t = setInterval(() => {
      const m = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m && out.includes("try: curl")) {
        // the last startup line: the key lines are in by then
        clearInterval(t);
        done(m[1]);
      } else if (child.exitCode !== null) {
        clearInterval(t);
        fail(new Error(`serve exited ${child.exitCode}: ${out}`));
      }
    }, 50);
  });
  return { child, output: () => out, url };
}

async function stop(child: ChildProcess): Promise<number | null> {
  child.kill("SIGTERM");
  return new Promise((done) => child.once("exit", (code) => done(code)));
}

test(
  "serve: generates the admin key once (mode 0600), requires it, and stops cleanly on SIGTERM",
  { skip: HAVE_MODEL ? false : "stories260K-hf not found" },
  async () => {
    const home = await mkdtemp(join(tmpdir(), "lowrank-serve-"));
    const started: ChildProcess[] = [];
    const serveTracked = (env: Record<string, string | undefined>) => {
      const x = serve(home, env);
      started.push(x.child);
      return x;
    };
    try {
      let s = serveTracked({});
      let url = await s.url;
      const printed = /admin API key \(shown once; stored in (.+), mode 0600\): (lrk-\S+)/.exec(s.output());
      assert.ok(printed, s.output());
      const keyFile = join(home, "admin.key");
      assert.equal(printed[1], keyFile);
      assert.equal((await readFile(keyFile, "utf8")).trim(), printed[2]);
      assert.equal((await stat(keyFile)).mode & 0o777, 0o600);
      const key = printed[2];
      assert.equal((await fetch(`${url}/v1/models`)).status, 401);
      const ok = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
      assert.equal(ok.status, 200);
      assert.equal((await ok.json()).data[0].id, "stories260K-hf");
      assert.equal(await stop(s.child), 0);
      assert.match(s.output(), /stopped/);

      // The second start reads the key file and does not print the key again.
      s = serveTracked({});
      url = await s.url;
      assert.ok(!s.output().includes(key), "the key is printed only when generated");
      assert.match(s.output(), /admin API key: in .*admin\.key/);
      assert.equal((await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).status, 200);
      assert.equal(await stop(s.child), 0);

      // LOWRANK_API_KEY wins over the file.
      s = serveTracked({ LOWRANK_API_KEY: "env-admin-key-0123456789" });
      url = await s.url;
      assert.match(s.output(), /from LOWRANK_API_KEY/);
      assert.equal((await fetch(`${url}/v1/models`, { headers: { authorization: "Bearer env-admin-key-0123456789" } })).status, 200);
      assert.equal((await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).status, 401);
      assert.equal(await stop(s.child), 0);
    } finally {
      for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
      await rm(home, { recursive: true, force: true });
    }
  },
);
