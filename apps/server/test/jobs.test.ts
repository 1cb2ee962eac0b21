/**
 * Fine-tuning jobs over HTTP: dataset upload, a job that registers its adapter, progress and
 * metrics over SSE, cancel, graceful shutdown (checkpoint, resume on the next start) and a
 * server killed with SIGKILL mid-run whose job resumes from its checkpoint after a restart and
 * ends with the same adapter as an uninterrupted run.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFile, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { openSafetensors } from "@lowrank/safetensors/node";
import { ADMIN, NEED_MODEL, STORIES, TINYSTORIES, type TestServer, call, completion, parseSse, startTestServer, tempDir } from "./helpers.ts";

const JOB = { dataset: "stories", steps: 24, checkpoint_every: 4, batch_size: 4, seq_len: 64, seed: 3, rank: 4, alpha: 8, dropout: 0.1 };
const CLI = fileURLToPath(new URL("../../cli/bin/lowrank.mjs", import.meta.url));
const children: ChildProcess[] = [];

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 90_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const job = (url: string, id: string) => call(url, "GET", `/v1/fine-tunes/${id}`).then((r) => r.json);
const finished = (url: string, id: string) =>
  waitFor(`job ${id} to finish`, async () => {
    const j = await job(url, id);
    return ["succeeded", "failed", "cancelled"].includes(j.status) ? j : undefined;
  });

async function uploadDataset(url: string): Promise<void> {
  const form = new FormData();
  form.set("file", new Blob([await readFile(TINYSTORIES)]), "tinystories.txt");
  form.set("name", "stories");
  const r = await call(url, "POST", "/v1/datasets", { raw: form });
  assert.equal(r.status, 201, r.text);
}

async function weights(home: string, name: string, version: number): Promise<Map<string, Uint8Array>> {
  const f = await openSafetensors(join(home, "adapters", name, `v${version}`, "adapter_model.safetensors"));
  const out = new Map<string, Uint8Array>();
  for (const n of f.names) out.set(n, (await f.read(n)).data.slice());
  await f.close();
  return out;
}

/** Worker processes still running for a job (its spec path is in their command line). */
async function workersOf(jobId: string): Promise<number> {
  let n = 0;
  for (const pid of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const cmd = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmd.includes(jobId) && cmd.includes("worker.ts")) n++;
  }
  return n;
}

/** `lowrank serve` as a child process; resolves with its URL once it listens. */
async function serveProcess(home: string): Promise<{ child: ChildProcess; url: string; out: () => string }> {
  const child = spawn(process.execPath, [CLI, "serve", "--model", STORIES, "--port", "0", "--home", home, "--backend", "cpu"], {
    env: { ...process.env, LOWRANK_API_KEY: ADMIN },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (out += d));
  children.push(child);
  // "try: curl" is the last startup line; the others (key, resumed jobs) are in by then.
  const url = await waitFor(
    "the server to listen",
    async () =>
      (out.includes("try: curl") && /on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1]) || (child.exitCode !== null ? Promise.reject(new Error(out)) : undefined),
    30_000,
  );
  return { child, url, out: () => out };
}

describe("fine-tuning jobs", { skip: NEED_MODEL }, () => {
  let s: TestServer;
  let reference: Map<string, Uint8Array>;
  const homes: string[] = [];

  before(async () => {
    s = await startTestServer();
    await uploadDataset(s.url);
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    await s?.close();
    for (const h of homes) await rm(h, { recursive: true, force: true });
  });

  test("a job trains, streams progress and metrics over SSE, and registers its adapter", async () => {
    const r = await call(s.url, "POST", "/v1/fine-tunes", { body: { adapter_name: "storyteller", ...JOB, description: "test run" } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.status, "queued");
    assert.match(r.json.id, /^ftjob-/);
    const events = await fetch(`${s.url}/v1/fine-tunes/${r.json.id}/events`, { headers: { authorization: `Bearer ${ADMIN}` } });
    assert.match(events.headers.get("content-type") ?? "", /^text\/event-stream/);
    const sse = parseSse(await events.text()); // ends when the job does
    const j = await job(s.url, r.json.id);
    assert.equal(j.status, "succeeded", JSON.stringify(j.error));
    assert.equal(sse[0].event, "job");
    assert.equal(sse[sse.length - 1].event, "done");
    assert.equal(JSON.parse(sse[sse.length - 1].data).status, "succeeded");
    const steps = sse.filter((e) => e.event === "progress").map((e) => JSON.parse(e.data).step);
    assert.deepEqual(
      steps,
      Array.from({ length: 24 }, (_, i) => i + 1),
    );
    const metrics = sse.filter((e) => e.event === "metrics").map((e) => JSON.parse(e.data));
    assert.equal(metrics.filter((m) => m.split === "train").length, 24);
    assert.ok(
      metrics.some((m) => m.split === "eval"),
      "eval metrics too",
    );
    assert.ok(sse.some((e) => e.event === "status" && JSON.parse(e.data).status === "running"));

    assert.equal(j.result.adapter, "storyteller@1");
    assert.equal(j.attempts, 1);
    assert.equal(j.resumed_from_step, null);
    const v = (await call(s.url, "GET", "/v1/adapters/storyteller/versions/1")).json;
    assert.equal(v.source, `job:${j.id}`);
    assert.equal(v.description, "test run");
    assert.match(v.dataset_hash, /^sha256:[0-9a-f]{64}$/);
    assert.equal(v.hyperparameters.rank, 4);
    assert.equal(v.hyperparameters.steps, 24);
    assert.equal(typeof v.eval_metrics.after.eval_loss, "number");
    assert.equal(typeof v.eval_metrics.final_train_loss, "number");
    const m = await call(s.url, "GET", `/v1/fine-tunes/${j.id}/metrics`);
    assert.equal(m.json.data.filter((x: { split: string }) => x.split === "train").length, 24);
    const c = await call(s.url, "POST", "/v1/completions", { body: completion("storyteller", "Once upon a time", { max_tokens: 8 }) });
    assert.equal(c.status, 200);
    assert.equal(c.json.adapter, "storyteller@1");
    reference = await weights(s.home.root, "storyteller", 1);
  });

  test("invalid datasets and jobs are refused before anything is queued", async () => {
    const bad = await call(s.url, "POST", "/v1/datasets?format=jsonl", { raw: '{"text": "ok"}\n{broken', headers: { "content-type": "application/jsonl" } });
    assert.equal(bad.status, 400, bad.text);
    assert.equal(bad.json.error.field, "data");
    const before = (await call(s.url, "GET", "/v1/fine-tunes")).json.data.length;
    for (const body of [
      { adapter_name: "x", dataset: "nope" },
      { adapter_name: "x", dataset: "stories", seq_len: 100000 },
      { adapter_name: "x", dataset: "stories", target_modules: ["q/proj"] },
    ]) {
      const r = await call(s.url, "POST", "/v1/fine-tunes", { body });
      assert.ok(r.status === 400 || r.status === 404, r.text);
      assert.ok(r.json.error.field, r.text);
    }
    assert.equal((await call(s.url, "GET", "/v1/fine-tunes")).json.data.length, before);
  });

  test("cancel stops a running job: cancelled, the worker is gone, nothing registered", async () => {
    const r = await call(s.url, "POST", "/v1/fine-tunes", { body: { adapter_name: "never", ...JOB, steps: 2000 } });
    await waitFor("progress", async () => ((await job(s.url, r.json.id)).progress?.step ?? 0) >= 2);
    const c = await call(s.url, "POST", `/v1/fine-tunes/${r.json.id}/cancel`);
    assert.equal(c.status, 200, c.text);
    assert.equal(c.json.status, "cancelled");
    assert.equal(await workersOf(r.json.id), 0);
    assert.equal((await call(s.url, "GET", "/v1/adapters/never")).status, 404);
    assert.equal((await call(s.url, "POST", `/v1/fine-tunes/${r.json.id}/cancel`)).status, 409);
  });

  test("graceful shutdown checkpoints a running job; the next start resumes it to the same result", async () => {
    const home = await tempDir("graceful");
    homes.push(home);
    let a = await startTestServer({ home });
    await uploadDataset(a.url);
    const r = await call(a.url, "POST", "/v1/fine-tunes", { body: { adapter_name: "graceful", ...JOB } });
    await waitFor("progress", async () => ((await job(a.url, r.json.id)).progress?.step ?? 0) >= 6);
    await a.shutdown();
    assert.equal(await workersOf(r.json.id), 0);
    a = await startTestServer({ home });
    try {
      assert.equal(a.recoveredJobs, 1);
      const j = await finished(a.url, r.json.id);
      assert.equal(j.status, "succeeded", JSON.stringify(j.error));
      assert.equal(j.attempts, 2);
      assert.ok(j.resumed_from_step >= 8 && j.resumed_from_step % 4 === 0, `resumed from ${j.resumed_from_step}`);
      assert.deepEqual(await weights(home, "graceful", 1), reference, "same adapter as the uninterrupted run");
    } finally {
      await a.close();
    }
  });

  test("a server killed mid-run (SIGKILL) resumes the job from its checkpoint on restart", async () => {
    const home = await tempDir("killed");
    homes.push(home);
    let p = await serveProcess(home);
    await uploadDataset(p.url);
    const r = await call(p.url, "POST", "/v1/fine-tunes", { body: { adapter_name: "survivor", ...JOB } });
    assert.equal(r.status, 201, r.text);
    const id = r.json.id;
    await waitFor("a checkpoint", async () => ((await job(p.url, id)).progress?.step ?? 0) >= 10);
    p.child.kill("SIGKILL");
    await new Promise((res) => p.child.once("exit", res));
    await waitFor("the orphaned worker to exit", async () => (await workersOf(id)) === 0, 10_000);
    const ckpts = (await readdir(join(home, "jobs", id, "out"))).filter((n) => n.startsWith("checkpoint-"));
    assert.ok(ckpts.length > 0, "a checkpoint survived the kill");
    p = await serveProcess(home);
    try {
      assert.match(p.out(), /resuming 1 fine-tuning job/);
      const j = await finished(p.url, id);
      assert.equal(j.status, "succeeded", JSON.stringify(j.error));
      assert.equal(j.attempts, 2);
      assert.ok(j.resumed_from_step >= 4, `resumed from ${j.resumed_from_step}`);
      const m = await call(p.url, "GET", `/v1/fine-tunes/${id}/metrics`);
      assert.deepEqual(
        m.json.data.filter((x: { split: string }) => x.split === "train").map((x: { step: number }) => x.step),
        Array.from({ length: 24 }, (_, i) => i + 1),
        "one train record per step, none duplicated",
      );
      assert.deepEqual(await weights(home, "survivor", 1), reference, "same adapter as the uninterrupted run");
    } finally {
      p.child.kill("SIGTERM");
      await new Promise((res) => p.child.once("exit", res));
    }
  });
});
