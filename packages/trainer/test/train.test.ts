/**
 * End to end on stories260K and a slice of Tiny Shakespeare (skipped without the shared data):
 * determinism, bit-identical resume, atomic checkpoints, NaN skipping, errors before training,
 * activation recomputation, and the output files.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { keep, noGrad, scope, tensor } from "@lowrank/tensor";
import { ConfigError, DatasetError, type FinetuneInput, type FinetuneIO, finetune, loadCheckpoint } from "../src/node.ts";
import { STORIES, dataDir, storiesRuns } from "./helpers.ts";

const { skip, tmp, slice, cfg } = storiesRuns("train");
const data = dataDir();
const backend = createCpuBackend();
const io = (over: Partial<FinetuneIO> = {}): FinetuneIO => ({ backend, skipSamples: true, ...over });
const bytes = (p: string) => readFileSync(p);

test.after(() => {
  tmp.remove();
  backend.dispose();
});

test("same seed, same backend: identical loss curve and weights, bit for bit (full and lora)", { skip }, async () => {
  for (const method of ["full", "lora"] as const) {
    const a = await finetune(cfg({ method, steps: 4, ...(method === "full" ? { targetModules: undefined } : {}) }), io());
    const b = await finetune(cfg({ method, steps: 4, ...(method === "full" ? { targetModules: undefined } : {}) }), io());
    assert.deepEqual(a.losses, b.losses);
    assert.equal(a.losses.length, 4);
    const file = method === "full" ? "model.safetensors" : "adapter_model.safetensors";
    assert.ok(bytes(join(a.output, file)).equals(bytes(join(b.output, file))), `${method}: ${file} differs`);
  }
});

test("resume is bit-identical: 6 steps straight == 3, stop, resume, 3 (lora, dropout, activations recomputed)", { skip }, async () => {
  const over = { recomputeActivations: true, saveEvery: 3, gradAccum: 2 };
  const straight = await finetune(cfg(over), io());
  const first = cfg(over);
  const half = await finetune(first, io({ stopAt: 3 }));
  assert.equal(half.steps, 3);
  assert.ok(existsSync(join(first.output, "checkpoint-3")));
  const resumed = await finetune({ ...first, resume: first.output }, io());
  assert.deepEqual(resumed.losses, straight.losses);
  for (const f of ["adapter_model.safetensors", "checkpoint-6/trainable.safetensors", "checkpoint-6/optimizer.safetensors"]) {
    assert.ok(bytes(join(first.output, f)).equals(bytes(join(straight.output, f))), `${f} differs after resume`);
  }
  // metrics.jsonl of the resumed run: each train step exactly once
  const steps = readFileSync(join(first.output, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l))
    .filter((r) => r.split === "train")
    .map((r) => r.step);
  assert.deepEqual(steps, [1, 2, 3, 4, 5, 6]);
  await assert.rejects(
    finetune({ ...first, output: join(tmp.path, "other"), resume: first.output, rank: 8 }, io()),
    /different settings \(rank: 4 there, 8 now\)/,
  );
});

test("a failure mid-save leaves the last good checkpoint; resuming from it completes the run identically", { skip }, async () => {
  const c = cfg({ method: "full", targetModules: undefined, steps: 4, saveEvery: 2 });
  const straight = await finetune({ ...c, output: join(tmp.path, "straight-full") }, io());
  await assert.rejects(
    finetune(
      c,
      io({
        beforeCommit: (dir) => {
          if (dir.includes("checkpoint-4")) throw new Error("simulated crash mid-save");
        },
      }),
    ),
    /simulated crash mid-save/,
  );
  const left = readdirSync(c.output).filter((n) => n.includes("checkpoint"));
  assert.deepEqual(left, ["checkpoint-2"], "only the complete checkpoint remains, no temporary directory");
  const ck = await loadCheckpoint(c.output);
  assert.equal(ck.state.global_step, 2);
  const resumed = await finetune({ ...c, resume: c.output }, io());
  assert.deepEqual(resumed.losses, straight.losses);
  assert.ok(bytes(join(c.output, "model.safetensors")).equals(bytes(join(tmp.path, "straight-full", "model.safetensors"))));
});

test("a process killed mid-save (SIGKILL) leaves the last good checkpoint, and resume completes the run", { skip }, async () => {
  const out = join(tmp.path, "killed");
  const script = fileURLToPath(new URL("./fixtures/kill-mid-save.ts", import.meta.url));
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  const args = g.Deno ? ["run", "-A", script] : g.Bun ? [script] : ["--import", "tsx", script];
  const code = await new Promise<number | null>((done, fail) => {
    const child = spawn(process.execPath, [...args, join(data as string, STORIES), slice, out], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d));
    child.on("error", fail);
    child.on(
      "close",
      (c, signal) => (signal === "SIGKILL" || c === 137 ? done(137) : done(c ?? -1), err && c !== 137 && signal !== "SIGKILL" && console.error(err)),
    );
  });
  assert.equal(code, 137, "the child was killed");
  const names = readdirSync(out).filter((n) => n.includes("checkpoint"));
  assert.ok(names.includes("checkpoint-2"), `checkpoint-2 survives (${names})`);
  assert.ok(!names.includes("checkpoint-4"), "the interrupted checkpoint was never committed");
  assert.ok(
    names.some((n) => n.startsWith(".tmp-checkpoint-4")),
    "the half-written save is a temporary directory",
  );
  const ck = await loadCheckpoint(out);
  assert.equal(ck.state.global_step, 2);
  const c = {
    model: join(data as string, STORIES),
    data: slice,
    method: "lora" as const,
    targetModules: "all-linear" as const,
    rank: 4,
    steps: 4,
    saveEvery: 2,
    batchSize: 2,
    seqLen: 32,
    evalFraction: 0.1,
    evalBatches: 1,
    sampleTokens: 0,
    seed: 5,
  };
  const resumed = await finetune({ ...c, output: out, resume: out }, io());
  const straight = await finetune({ ...c, output: join(tmp.path, "killed-straight") }, io());
  assert.deepEqual(resumed.losses, straight.losses);
  assert.ok(!readdirSync(out).some((n) => n.startsWith(".tmp-")), "stale temporary directories are cleaned up");
  assert.ok(bytes(join(out, "adapter_model.safetensors")).equals(bytes(join(tmp.path, "killed-straight", "adapter_model.safetensors"))));
});

test("a non-finite gradient skips the update, is reported, and training goes on", { skip }, async () => {
  const c = cfg({ steps: 4 });
  const r = await finetune(
    c,
    io({
      afterBackward: (step, params) => {
        if (step !== 1) return;
        const [, p] = [...params][0];
        noGrad(() => p.grad!.assign(keep(tensor(new Float32Array(p.size).fill(NaN), { shape: [...p.shape], backend }))));
      },
    }),
  );
  assert.equal(r.skipped, 1);
  const recs = readFileSync(join(c.output, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  const s2 = recs.find((x) => x.split === "train" && x.step === 2);
  assert.match(s2.skipped, /non-finite gradient norm/);
  const ck = await loadCheckpoint(c.output);
  assert.equal(ck.optimizer.step, 3, "3 updates for 4 steps");
  assert.ok(r.losses.every(Number.isFinite));
});

test("mistakes fail before any training: method, targets, rank, dataset, mixed precision, seq len", { skip }, async () => {
  const bad = join(tmp.path, "bad.jsonl");
  writeFileSync(bad, '{"text": "fine"}\n{"txt": "oops"}\n');
  const cases: [Partial<FinetuneInput>, RegExp][] = [
    [{ method: "prefix" as never }, /unknown method "prefix": use one of qlora, lora, full/],
    [{ targetModules: ["q_proj", "qkv_proj"] }, /qkv_proj/],
    [{ rank: 100 }, /r = 100 is larger than min\(in_features 64, out_features/],
    [{ data: bad }, /bad\.jsonl:2: field "text": missing/],
    [{ data: join(tmp.path, "nope.txt") }, /nope\.txt: no such file/],
    [{ mixedPrecision: "bf16", method: "full", targetModules: undefined }, /--bf16 with --method full: a full fine-tune would need f32 master copies/],
    [{ seqLen: 4096 }, /seq len 4096 exceeds the model's max_position_embeddings \(512\)/],
  ];
  for (const [over, re] of cases) {
    const c = cfg(over);
    await assert.rejects(finetune(c, io()), (e: Error) => {
      assert.match(e.message, re);
      return true;
    });
    assert.ok(!existsSync(join(c.output, "metrics.jsonl")), `no training started for ${JSON.stringify(over)}`);
  }
  await assert.rejects(finetune(cfg({ data: bad }), io()), DatasetError);
  // A backend that cannot store the precision says so and stops; nothing falls back to f32.
  const noHalf = Object.create(backend, { dtypes: { value: ["f32", "i32", "u8"] } }) as typeof backend;
  await assert.rejects(finetune(cfg({ mixedPrecision: "fp16" }), io({ backend: noHalf })), (e: Error) => {
    assert.ok(e instanceof ConfigError);
    assert.match(e.message, /--fp16: the cpu backend cannot compute in f16; train in fp32/);
    return true;
  });
});

test("outputs: PEFT adapter, training_args.json, metrics.jsonl, eval_report.json with before/after and samples", { skip }, async () => {
  const c = cfg({ steps: 3, evalEvery: 2, sampleTokens: 8 });
  const r = await finetune(c, { backend });
  const files = readdirSync(c.output);
  for (const f of [
    "adapter_model.safetensors",
    "adapter_config.json",
    "training_args.json",
    "metrics.jsonl",
    "eval_report.json",
    "tokenizer.json",
    "checkpoint-3",
  ])
    assert.ok(files.includes(f), `${f} missing (${files})`);
  const adapterCfg = JSON.parse(readFileSync(join(c.output, "adapter_config.json"), "utf8"));
  assert.equal(adapterCfg.peft_type, "LORA");
  assert.equal(adapterCfg.r, 4);
  const recs = readFileSync(join(c.output, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  assert.deepEqual(
    recs.map((x) => `${x.split}@${x.step}`),
    ["eval@0", "train@1", "train@2", "eval@2", "train@3", "eval@3"],
  );
  const t = recs[1];
  assert.deepEqual(Object.keys(t).sort(), ["grad_norm", "loss", "lr", "peak_bytes", "split", "step", "tokens_per_s"]);
  assert.ok(t.peak_bytes > 0 && t.tokens_per_s > 0 && t.lr === 0, "warmup 1: the first update has lr 0 (HF)");
  assert.ok("eval_loss" in recs[0]);
  const report = JSON.parse(readFileSync(join(c.output, "eval_report.json"), "utf8"));
  assert.equal(report.before.eval_loss, r.before!.loss);
  assert.ok(report.after.eval_loss < report.before.eval_loss, `eval loss ${report.before.eval_loss} -> ${report.after.eval_loss}`);
  assert.equal(typeof report.samples.before, "string");
  assert.equal(typeof report.samples.after, "string");
  const args = JSON.parse(readFileSync(join(c.output, "training_args.json"), "utf8"));
  assert.equal(args.rank, 4);
  assert.equal(args.total_steps, 3);
});
