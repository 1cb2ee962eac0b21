/** `lowrank finetune` end to end (spawned): help, usage errors before training, a short real run. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { FINETUNE_OPTIONS, finetuneInput } from "../src/finetune.ts";

const CLI_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = resolve(CLI_DIR, "../..");
const BIN = join(CLI_DIR, "bin", "lowrank.mjs");
const DATA = process.env.LOWRANK_DATA_DIR ?? resolve(ROOT, "../shared/data");
const hasData = existsSync(join(DATA, "models/stories260K-hf/config.json"));
const tmp = mkdtempSync(join(tmpdir(), "lowrank-cli-finetune-"));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

function lowrank(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const node = "Bun" in globalThis || "Deno" in globalThis ? "node" : process.execPath;
  return new Promise((done, fail) => {
    const child = spawn(node, [BIN, ...args], { cwd: ROOT, env: { ...process.env, LOWRANK_BACKEND: undefined }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d));
    child.stderr.on("data", (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr: stderr.replace(/^Warning: maxDynamic\w+ artificially reduced.*\n?/gm, "") });
    });
  });
}

test("finetune --help lists the TRL/PEFT-style flags", async () => {
  const r = await lowrank(["finetune", "--help"]);
  assert.equal(r.code, 0, r.stderr);
  for (const flag of [
    "--model",
    "--data",
    "--method <qlora|lora|full>",
    "--rank 8",
    "--target-modules",
    "--grad-accum",
    "--warmup",
    "--resume",
    "--eval-every",
    "--bf16",
  ]) {
    assert.ok(r.stdout.includes(flag), `${flag} missing from help`);
  }
});

test("usage errors exit 2 before any work", async () => {
  const cases: [string[], RegExp][] = [
    [["finetune", "--data", "x.txt"], /--model <dir> is required/],
    [["finetune", "--model", "m", "--data", "d", "--rank", "eight"], /--rank eight: not a number/],
    [["finetune", "--model", "m", "--data", "d", "--frobnicate"], /Unknown option '--frobnicate'/],
    [["finetune", "--model", "m", "--data", "d", "--backend", "tpu"], /--backend tpu is not a backend/],
  ];
  for (const [args, re] of cases) {
    const r = await lowrank(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});

test("--recompute-activations, or transformers' --gradient-checkpointing as its alias, switches recomputation; contradictions are usage errors", () => {
  const recompute = (...flags: string[]) => {
    const { values } = parseArgs({ args: ["--model", "m", "--data", "d", ...flags], options: FINETUNE_OPTIONS, allowPositionals: true });
    return finetuneInput(values, {}, tmp).recomputeActivations;
  };
  assert.equal(recompute(), undefined, "unset: the trainer's default (on for qlora)");
  assert.equal(recompute("--recompute-activations"), true);
  assert.equal(recompute("--gradient-checkpointing"), true);
  assert.equal(recompute("--no-recompute-activations"), false);
  assert.equal(recompute("--no-gradient-checkpointing"), false);
  assert.throws(() => recompute("--gradient-checkpointing", "--no-recompute-activations"), /contradict each other/);
});

test("bad method, target module and dataset are reported before training", { skip: hasData ? false : "no shared data" }, async () => {
  const bad = join(tmp, "bad.jsonl");
  writeFileSync(bad, '{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n');
  const base = ["finetune", "--model", "models/stories260K-hf", "--data", "datasets/tinyshakespeare/input.txt", "--output", join(tmp, "x"), "--backend", "cpu"];
  const cases: [string[], number, RegExp][] = [
    [["--method", "adapter"], 2, /unknown method "adapter"/],
    [["--method", "lora", "--target-modules", "q_proj,wq"], 2, /wq/],
    [["--method", "lora", "--rank", "128"], 2, /r = 128 is larger than/],
    [["--method", "lora", "--data", bad], 1, /dataset error: .*bad\.jsonl:2: field "output": missing/],
  ];
  for (const [extra, code, re] of cases) {
    const r = await lowrank([...base, ...extra]);
    assert.equal(r.code, code, r.stderr);
    assert.match(r.stderr, re);
    assert.ok(!existsSync(join(tmp, "x", "metrics.jsonl")));
  }
});

test("a short LoRA run prints eval loss before/after and a sample, and saves the adapter", { skip: hasData ? false : "no shared data" }, async () => {
  const slice = join(tmp, "slice.txt");
  writeFileSync(slice, readFileSync(join(DATA, "datasets/tinyshakespeare/input.txt"), "utf8").slice(0, 5000));
  const out = join(tmp, "run");
  const r = await lowrank([
    "finetune",
    "--model",
    "models/stories260K-hf",
    "--data",
    slice,
    "--method",
    "lora",
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--eval-batches",
    "2",
    "--sample-tokens",
    "6",
    "--output",
    out,
    "--backend",
    "cpu",
    "--lr",
    "1e-3",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^lora fine-tune: 3 steps/m);
  assert.match(r.stdout, /^eval loss \d+\.\d+ -> \d+\.\d+, perplexity/m);
  assert.match(r.stdout, /^ {2}before: ".*"$/m);
  assert.match(r.stdout, /^ {2}after: {2}".*"$/m);
  assert.match(r.stderr, /^backend: cpu/m);
  assert.match(r.stderr, /^step 3\/3 loss/m, "plain progress lines when stderr is not a TTY");
  for (const f of ["adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "training_args.json", "eval_report.json"])
    assert.ok(existsSync(join(out, f)), f);
});
