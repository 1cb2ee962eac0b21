/**
 * One training run for every edge: `lowrank finetune` (in process, --backend cpu), a server job's
 * worker (worker.ts in a child process, as the job runner spawns it, on the server's backend) and
 * the web page train the same spec with the same seed. They call the same @lowrank/trainer run(),
 * so metrics.jsonl must agree value for value, and the adapter weights byte for byte.
 *
 * The page is tested twice: its worker code (apps/web's runTraining) under Node, and the built page
 * in headless Chromium. Chromium's CPU backend has no BLAS, Node may use OpenBLAS; both run the
 * relaxed-SIMD (fused multiply-add) WASM builds by default, but relaxed_madd may fuse or not as the
 * engine likes, and Node 20's V8 and Chromium 156's do not round alike (with relaxed SIMD on both
 * sides the losses differ). So the Chromium test pins one path on every side: no BLAS and plain
 * SIMD, LOWRANK_BLAS=off LOWRANK_SIMD=plain for Node and ?simd=plain for the page.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { storage } from "@lowrank/safetensors/node";
import { finetuneCommand } from "../../cli/src/finetune.ts";
import { OUTPUT_DIR, runTraining } from "../../web/src/worker/train.ts";
import { parseJobParams } from "../src/http/fine-tunes.ts";
import type { WorkerSpec } from "../src/jobs/spec.ts";
import type { JobParams } from "../src/jobs/store.ts";
import { download, finished, openPage, pageSkip, startPage } from "../../web/test/page.ts";
import { NEED_MODEL, STORIES, dataDir, tempDir } from "./helpers.ts";

const SPEC = {
  method: "lora",
  rank: 4,
  alpha: 8,
  dropout: 0.1,
  targets: "all-linear",
  seed: 3,
  steps: 6,
  lr: 3e-3,
  batchSize: 2,
  seqLen: 32,
  warmup: 1,
  evalFraction: 0.1,
} as const;

/** Run a job's worker as the job runner does (stdin stays open: its closing means "the server died"). */
async function runWorker(dir: string, spec: WorkerSpec, env: Record<string, string> = {}): Promise<void> {
  await writeFile(join(dir, "spec.json"), JSON.stringify(spec));
  const worker = fileURLToPath(new URL("../src/jobs/worker.ts", import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", worker, join(dir, "spec.json")], {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
  let events = "";
  child.stdout.on("data", (d: Buffer) => (events += d.toString()));
  const code = await new Promise<number | null>((r) => child.on("exit", r));
  assert.equal(code, 0, `the job worker failed: ${events}`);
}

/** `lowrank finetune` in this process, stdout silenced; `env` is set for the call (the CPU backend reads LOWRANK_BLAS and LOWRANK_SIMD). */
async function runCli(argv: string[], env: Record<string, string> = {}): Promise<void> {
  const log = console.log;
  const old = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  console.log = () => {};
  Object.assign(process.env, env);
  try {
    assert.equal(await finetuneCommand([...argv, "--backend", "cpu"], { ...process.env, LOWRANK_BACKEND: undefined }), 0);
  } finally {
    console.log = log;
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** The CLI's flags for SPEC. */
const specArgv = (model: string, data: string, output: string) => [
  "--model",
  model,
  "--data",
  data,
  "--output",
  output,
  "--method",
  SPEC.method,
  "--rank",
  String(SPEC.rank),
  "--alpha",
  String(SPEC.alpha),
  "--dropout",
  String(SPEC.dropout),
  "--target-modules",
  SPEC.targets,
  "--seed",
  String(SPEC.seed),
  "--steps",
  String(SPEC.steps),
  "--lr",
  String(SPEC.lr),
  "--batch-size",
  String(SPEC.batchSize),
  "--seq-len",
  String(SPEC.seqLen),
  "--warmup",
  String(SPEC.warmup),
  "--eval-fraction",
  String(SPEC.evalFraction),
  "--eval-batches",
  "8",
  "--sample-tokens",
  "0",
];

/** The server's job parameters for SPEC. */
const specParams = (name: string): JobParams => ({
  adapter_name: name,
  method: SPEC.method,
  rank: SPEC.rank,
  alpha: SPEC.alpha,
  dropout: SPEC.dropout,
  target_modules: SPEC.targets,
  seed: SPEC.seed,
  steps: SPEC.steps,
  epochs: null,
  learning_rate: SPEC.lr,
  batch_size: SPEC.batchSize,
  seq_len: SPEC.seqLen,
  warmup: SPEC.warmup,
  checkpoint_every: 0,
  eval_fraction: SPEC.evalFraction,
  data_format: null,
  description: null,
});

/** SPEC's training text: the first 6000 characters of Tiny Shakespeare, also written to `dir`/slice.txt. */
async function specText(dir: string): Promise<{ text: string; data: string }> {
  const text = (await readFile(join(dataDir()!, "datasets", "tinyshakespeare", "input.txt"), "utf8")).slice(0, 6000);
  const data = join(dir, "slice.txt");
  await writeFile(data, text);
  return { text, data };
}

/** The values a run decides (not its timings or memory). */
function decided(jsonl: string): Record<string, unknown>[] {
  return jsonl
    .trim()
    .split("\n")
    .map((l) => {
      const { tokens_per_s: _t, peak_bytes: _p, ...rest } = JSON.parse(l) as Record<string, unknown>;
      return rest;
    });
}

test(
  "lowrank finetune, a server job and the web worker give identical metrics.jsonl and adapter weights for one spec",
  { skip: NEED_MODEL, timeout: 600_000 },
  async () => {
    const dir = await tempDir("one-run");
    const { text, data } = await specText(dir);

    // 1. the CLI
    const cliOut = join(dir, "cli");
    await runCli(specArgv(STORIES, data, cliOut));

    // 2. a server job's worker, spawned as the job runner does
    const jobOut = join(dir, "job");
    await runWorker(dir, { jobId: "one-run", backend: "cpu", model: STORIES, data, output: jobOut, params: specParams("one-run") });

    // 3. the web page's worker (run here in Node)
    const { readFile: readBytes } = storage(); // the Node storage, before the web run swaps in its memory storage
    const files = new Map<string, Blob>();
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
      files.set(f, new Blob([(await readBytes(join(STORIES, f))) as BlobPart]));
    const backend = createCpuBackend();
    const posted: string[] = [];
    const web = await runTraining(
      {
        backend,
        post: (m) => posted.push(m.type),
        isCancelled: () => false,
        files: {
          name: "stories260K-hf",
          files: {
            config: files.get("config.json")!,
            tokenizer: files.get("tokenizer.json")!,
            tokenizerConfig: files.get("tokenizer_config.json"),
            weights: new Map([["model.safetensors", files.get("model.safetensors")!]]),
          },
        },
      },
      {
        text,
        textName: "slice.txt",
        method: SPEC.method,
        rank: SPEC.rank,
        alpha: SPEC.alpha,
        dropout: SPEC.dropout,
        targets: SPEC.targets,
        steps: SPEC.steps,
        lr: SPEC.lr,
        batchSize: SPEC.batchSize,
        seqLen: SPEC.seqLen,
        warmup: SPEC.warmup,
        seed: SPEC.seed,
      },
    );
    const webMetrics = await web.storage.readText(`${OUTPUT_DIR}/metrics.jsonl`);
    const webWeights = await web.storage.readFile(`${OUTPUT_DIR}/adapter_model.safetensors`);
    web.trained.model.dispose();
    backend.dispose();
    const { nodeStorage } = await import("@lowrank/safetensors/node");
    (await import("@lowrank/safetensors")).setStorage(nodeStorage);

    const cli = decided(await readFile(join(cliOut, "metrics.jsonl"), "utf8"));
    assert.equal(cli.filter((r) => r.split === "train").length, SPEC.steps);
    assert.equal(cli.filter((r) => r.split === "eval").length, 2, "eval before and after");
    assert.deepEqual(decided(await readFile(join(jobOut, "metrics.jsonl"), "utf8")), cli, "server job vs lowrank finetune");
    assert.deepEqual(decided(webMetrics), cli, "web worker vs lowrank finetune");
    assert.deepEqual(posted.filter((t) => t === "step").length, SPEC.steps);
    const cliWeights = new Uint8Array(await readFile(join(cliOut, "adapter_model.safetensors")));
    assert.deepEqual(new Uint8Array(await readFile(join(jobOut, "adapter_model.safetensors"))), cliWeights);
    assert.deepEqual(webWeights, cliWeights);
  },
);

// The page's bundled model is the same stories260K-hf folder (apps/web/src/build/data-assets.ts).
test(
  "the built web page in headless Chromium (CPU backend, plain SIMD) gives the metrics.jsonl and adapter bytes of lowrank finetune and a server job (no BLAS, plain SIMD)",
  { skip: NEED_MODEL || pageSkip(), timeout: 300_000 },
  async (t) => {
    const t0 = Date.now();
    const say = (line: string) => t.diagnostic(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${line}`);
    const dir = await tempDir("one-run-page");
    const { text, data } = await specText(dir);
    // The page's path on Node: no BLAS (a browser has no FFI), and plain SIMD, which rounds alike in every engine.
    const samePath = { LOWRANK_BLAS: "off", LOWRANK_SIMD: "plain" };
    const cliOut = join(dir, "cli");
    await runCli(specArgv(STORIES, data, cliOut), samePath);
    const jobOut = join(dir, "job");
    await runWorker(dir, { jobId: "one-run-page", backend: "cpu", model: STORIES, data, output: jobOut, params: specParams("one-run-page") }, samePath);
    say("lowrank finetune and the server job trained");

    const host = await startPage();
    const pageOut = join(dir, "page");
    try {
      say(`built the page into ${host.outDir}`);
      const { page, problems, backend } = await openPage(host, "backend=cpu&simd=plain", say);
      assert.equal(await page.getAttribute("#backend", "data-simd"), "plain", backend);
      // The form, filled in as a person would: every target module stays checked (all-linear).
      await page.fill("#text", text);
      await page.selectOption("#method", SPEC.method);
      const fields = {
        rank: SPEC.rank,
        alpha: SPEC.alpha,
        dropout: SPEC.dropout,
        steps: SPEC.steps,
        lr: SPEC.lr,
        batch: SPEC.batchSize,
        "seq-len": SPEC.seqLen,
        warmup: SPEC.warmup,
        seed: SPEC.seed,
      };
      for (const [id, v] of Object.entries(fields)) await page.fill(`#${id}`, String(v));
      await page.click("#train");
      assert.equal(await finished(page, 120_000), "done");
      say(`the page trained ${SPEC.steps} steps`);
      await page.click("#export");
      await page.waitForSelector("#dl-metrics-jsonl");
      await mkdir(pageOut);
      for (const f of ["metrics.jsonl", "adapter_model.safetensors"]) await download(page, f, join(pageOut, f));
      assert.deepEqual(problems, []);
    } finally {
      await host.close();
    }

    const cli = decided(await readFile(join(cliOut, "metrics.jsonl"), "utf8"));
    assert.equal(cli.filter((r) => r.split === "train").length, SPEC.steps);
    assert.deepEqual(decided(await readFile(join(jobOut, "metrics.jsonl"), "utf8")), cli, "server job vs lowrank finetune");
    assert.deepEqual(decided(await readFile(join(pageOut, "metrics.jsonl"), "utf8")), cli, "the page in Chromium vs lowrank finetune");
    const cliWeights = new Uint8Array(await readFile(join(cliOut, "adapter_model.safetensors")));
    assert.deepEqual(new Uint8Array(await readFile(join(jobOut, "adapter_model.safetensors"))), cliWeights);
    assert.deepEqual(new Uint8Array(await readFile(join(pageOut, "adapter_model.safetensors"))), cliWeights, "the page's adapter vs lowrank finetune's");
    say(
      `identical: ${cli.length} metrics records (losses ${cli
        .filter((r) => r.split === "train")
        .map((r) => r.loss)
        .join(", ")}) and ${cliWeights.length} adapter bytes`,
    );
  },
);

const PROJ = { q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn", gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp" };

test(
  "lowrank finetune --use-dora --use-rslora --modules-to-save lm_head saves PEFT's config and keys; a server job with the same fields writes the same bytes",
  { skip: NEED_MODEL, timeout: 600_000 },
  async () => {
    const dir = await tempDir("dora");
    const data = join(dir, "slice.txt");
    await writeFile(data, (await readFile(join(dataDir()!, "datasets", "tinyshakespeare", "input.txt"), "utf8")).slice(0, 4000));
    const cliOut = join(dir, "cli");
    await runCli([
      "--model",
      STORIES,
      "--data",
      data,
      "--output",
      cliOut,
      "--method",
      "lora",
      "--target-modules",
      "all-linear",
      "--rank",
      "4",
      "--alpha",
      "8",
      "--use-dora",
      "--use-rslora",
      "--modules-to-save",
      "lm_head",
      "--steps",
      "2",
      "--batch-size",
      "2",
      "--seq-len",
      "32",
      "--eval-fraction",
      "0.1",
      "--sample-tokens",
      "0",
      "--seed",
      "4",
    ]);
    const config = JSON.parse(await readFile(join(cliOut, "adapter_config.json"), "utf8")) as Record<string, unknown>;
    // What PEFT's LoraConfig(r=4, lora_alpha=8, use_dora=True, use_rslora=True, modules_to_save=["lm_head"], target_modules="all-linear").save_pretrained writes for these keys.
    assert.equal(config.peft_type, "LORA");
    assert.equal(config.task_type, "CAUSAL_LM");
    assert.deepEqual([config.r, config.lora_alpha, config.use_dora, config.use_rslora, config.bias], [4, 8, true, true, "none"]);
    assert.deepEqual(config.modules_to_save, ["lm_head"]);
    assert.deepEqual(new Set(config.target_modules as string[]), new Set(Object.keys(PROJ)), "all-linear expanded to the Linear names, lm_head excluded");
    assert.deepEqual(Object.keys(config), [...Object.keys(config)].sort(), "sorted keys, as json.dumps(sort_keys=True)");

    const { openSafetensors } = await import("@lowrank/safetensors/node");
    const f = await openSafetensors(join(cliOut, "adapter_model.safetensors"));
    const keys = new Set(f.names);
    const shapes = Object.fromEntries(f.names.map((n) => [n, f.tensors[n].shape]));
    await f.close();
    const want = new Set<string>(["base_model.model.lm_head.weight"]);
    for (let i = 0; i < 5; i++) {
      for (const [proj, block] of Object.entries(PROJ)) {
        for (const k of ["lora_A.weight", "lora_B.weight", "lora_magnitude_vector"]) want.add(`base_model.model.model.layers.${i}.${block}.${proj}.${k}`);
      }
    }
    assert.deepEqual(keys, want, "PEFT's keys: adapter name removed, DoRA magnitude without .weight, modules_to_save under the module's plain name");
    assert.deepEqual(shapes["base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector"], [64]);
    assert.deepEqual(shapes["base_model.model.lm_head.weight"], [512, 64]);

    // The same fields through the server: the request is parsed as the HTTP route parses it.
    const params = parseJobParams(
      {
        adapter_name: "dora",
        method: "lora",
        target_modules: "all-linear",
        rank: 4,
        alpha: 8,
        use_dora: true,
        use_rslora: true,
        modules_to_save: ["lm_head"],
        steps: 2,
        batch_size: 2,
        seq_len: 32,
        eval_fraction: 0.1,
        seed: 4,
        dropout: 0.05,
        learning_rate: 2e-4,
        warmup: 0.1,
        checkpoint_every: 10,
      },
      512,
    );
    const jobOut = join(dir, "job");
    await runWorker(dir, { jobId: "dora", backend: "cpu", model: STORIES, data, output: jobOut, params });
    for (const file of ["adapter_model.safetensors", "adapter_config.json"]) {
      assert.deepEqual(
        new Uint8Array(await readFile(join(jobOut, file))),
        new Uint8Array(await readFile(join(cliOut, file))),
        `${file}: server job vs lowrank finetune`,
      );
    }
    assert.throws(() => parseJobParams({ adapter_name: "x", use_dora: "yes" }, 512), /use_dora = "yes" must be true or false/);
    assert.throws(() => parseJobParams({ adapter_name: "x", lora_alpah: 8 }, 512), /lora_alpah/);
  },
);

test(
  "a server job trains on the kind of backend the server runs on (webgpu here, when an adapter exists)",
  { skip: NEED_MODEL, timeout: 300_000 },
  async (t) => {
    try {
      const { requestWebGpu } = await import("@lowrank/backend-webgpu/node");
      (await requestWebGpu()).release();
    } catch (e) {
      t.skip(`no WebGPU adapter: ${(e as Error).message.split("\n")[0]}`);
      return;
    }
    const dir = await tempDir("webgpu-job");
    const data = join(dir, "slice.txt");
    await writeFile(data, (await readFile(join(dataDir()!, "datasets", "tinyshakespeare", "input.txt"), "utf8")).slice(0, 3000));
    const params = parseJobParams(
      { adapter_name: "w", rank: 4, alpha: 8, dropout: 0, steps: 2, batch_size: 2, seq_len: 32, eval_fraction: 0.1, warmup: 0 },
      512,
    );
    await runWorker(dir, { jobId: "w", backend: "webgpu", model: STORIES, data, output: join(dir, "out"), params });
    const args = JSON.parse(await readFile(join(dir, "out", "training_args.json"), "utf8")) as { backend: string };
    assert.equal(args.backend, "webgpu");
    assert.equal(decided(await readFile(join(dir, "out", "metrics.jsonl"), "utf8")).filter((r) => r.split === "train").length, 2);
  },
);
