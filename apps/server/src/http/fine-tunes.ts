/**
 * Datasets and fine-tuning jobs: upload a dataset (checked by the trainer's own parser before it
 * is stored), start a job, follow it over SSE, cancel it, read its metrics. API keys live here too.
 */
import { createWriteStream } from "node:fs";
import { readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Context, Hono } from "hono";
import { LoraConfigError, loraOptions } from "@lowrank/lora/node";
import { ConfigError, DATA_FORMATS, resolveConfig } from "@lowrank/trainer/node";
import { SCOPES, type Scope } from "../auth.ts";
import { conflict, invalid, notFound, tooLarge } from "../errors.ts";
import { checkJobMemory, checkJobQueue } from "../jobs/admission.ts";
import { finetuneInput } from "../jobs/spec.ts";
import { type Job, JOB_STATES, type JobParams, type JobStatus, TERMINAL } from "../jobs/store.ts";
import { checkName } from "../registry/names.ts";
import type { Dataset } from "../registry/registry.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { limitBody, readJson, requireScope } from "./middleware.ts";
import { readMultipart } from "./multipart.ts";
import { type Obj, asObject, int, num, oneOf, rejectUnknown, str } from "./validate.ts";

/** PEFT LoraConfig fields a job takes under PEFT's own names (what `lowrank finetune --lora-config` reads). */
export const LORA_FIELDS = [
  "use_dora",
  "use_rslora",
  "modules_to_save",
  "bias",
  "exclude_modules",
  "layers_to_transform",
  "layers_pattern",
  "rank_pattern",
  "alpha_pattern",
  "init_lora_weights",
];

const FT_FIELDS = [
  "adapter_name",
  "model",
  "dataset",
  "data",
  "data_format",
  "method",
  "rank",
  "alpha",
  "dropout",
  "target_modules",
  "seed",
  "steps",
  "epochs",
  "learning_rate",
  "batch_size",
  "seq_len",
  "warmup",
  "checkpoint_every",
  "eval_fraction",
  "description",
  ...LORA_FIELDS,
];

/** The LoraConfig fields of a request, checked as the trainer checks them (errors name the field). */
function loraFields(o: Obj): Record<string, unknown> {
  const fields = Object.fromEntries(LORA_FIELDS.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
  try {
    loraOptions(fields, "the request's LoRA fields");
  } catch (e) {
    if (!(e instanceof LoraConfigError)) throw e;
    throw invalid(e.message, LORA_FIELDS.find((k) => e.message.includes(`${k} =`)) ?? null);
  }
  return fields;
}

type DataFormat = (typeof DATA_FORMATS)[number];

function targetModules(o: Obj): string[] | "all-linear" {
  const v = o.target_modules;
  if (v === undefined || v === null) return ["q_proj", "v_proj"];
  if (v === "all-linear") return v;
  if (!Array.isArray(v) || v.length < 1 || v.length > 64)
    throw invalid('target_modules must be "all-linear" or an array of 1-64 module names', "target_modules");
  return v.map((m, i) => {
    if (typeof m !== "string" || !/^[\w.]{1,128}$/.test(m)) throw invalid(`target_modules[${i}] must be a module name like "q_proj"`, `target_modules[${i}]`);
    return m;
  });
}

export function parseJobParams(o: Obj, maxSeqLen: number): JobParams {
  rejectUnknown(o, FT_FIELDS);
  const method = oneOf(o, "method", ["lora", "qlora", "full"] as const, "lora");
  if (method === "full")
    throw invalid("method full trains every weight and produces a model, not an adapter; the server registers adapters, use lora", "method");
  const steps = int(o, "steps", { min: 1, max: 1_000_000 });
  const epochs = num(o, "epochs", { min: 0.001, max: 1000 });
  return {
    adapter_name: checkName(o.adapter_name ?? null, "adapter_name"),
    method,
    rank: int(o, "rank", { def: 8, min: 1, max: 1024 }),
    alpha: num(o, "alpha", { def: 16, min: 1e-6, max: 1e6 }),
    dropout: num(o, "dropout", { def: 0.05, min: 0, max: 0.99 }),
    target_modules: targetModules(o),
    lora: loraFields(o),
    seed: int(o, "seed", { def: 0, min: 0, max: 2 ** 32 - 1 }),
    steps: steps ?? null,
    epochs: steps === undefined ? epochs ?? 1 : null,
    learning_rate: num(o, "learning_rate", { def: 2e-4, min: 1e-9, max: 1 }),
    batch_size: int(o, "batch_size", { def: 8, min: 1, max: 1024 }),
    seq_len: int(o, "seq_len", { def: Math.min(128, maxSeqLen), min: 2, max: maxSeqLen }),
    warmup: num(o, "warmup", { def: 0.1, min: 0, max: 1_000_000 }),
    checkpoint_every: int(o, "checkpoint_every", { def: 10, min: 1, max: 1_000_000 }),
    eval_fraction: num(o, "eval_fraction", { def: 0.05, min: 0, max: 0.9 }),
    data_format: o.data_format === undefined || o.data_format === null ? null : oneOf(o, "data_format", DATA_FORMATS, "text"),
    description: str(o, "description", { max: 2000 }) ?? null,
  };
}

export function fineTuneRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const { registry, host, jobs, runner } = ctx;
  const maxSeq = host.model.config.max_position_embeddings;

  /**
   * Check a staged dataset file in the tokenizer thread (UTF-8 text, no NULs, the trainer's own
   * parser and tokenizer), then store it content-addressed. Only the extension of a client's file
   * name is kept (the trainer detects formats by it); never the path.
   */
  async function storeDataset(path: string, opts: { name?: string; filename?: string; format?: DataFormat; field: string }): Promise<Dataset> {
    const ext = /\.(txt|jsonl|json)$/i.exec(opts.filename ?? "")?.[0].toLowerCase() ?? (opts.format && opts.format !== "text" ? ".jsonl" : ".txt");
    const label = `data${ext}`;
    const stats = await ctx.tokens.dataset(path, label, opts.format, Math.min(128, maxSeq), opts.field);
    return registry.addDataset(path, { name: opts.name ?? null, filename: label, format: stats.format });
  }

  app.post("/v1/datasets", requireScope("train"), limitBody(ctx.limits.maxDatasetBytes), async (c) => {
    const type = c.req.header("content-type") ?? "";
    let name = c.req.query("name");
    let filename = c.req.query("filename");
    let format = c.req.query("format");
    const dir = registry.stagingDir("dataset");
    try {
      let path: string;
      if (type.startsWith("multipart/form-data")) {
        const { fields, files } = await readMultipart(c.req.raw.body, type, {
          dir,
          allowed: ["file", "name", "format"],
          fileFields: ["file"],
          maxBytes: ctx.limits.maxDatasetBytes,
          maxFieldBytes: 256,
        });
        if (!files.file) throw invalid("file is required as a file field (curl -F file=@data.jsonl)", "file");
        path = files.file.path;
        filename = files.file.filename || filename;
        if (fields.name) name = fields.name;
        if (fields.format) format = fields.format;
      } else path = await streamToFile(c.req.raw.body, join(dir, "body"), ctx.limits.maxDatasetBytes);
      if (name !== undefined) checkName(name, "name");
      if (format !== undefined && !(DATA_FORMATS as readonly string[]).includes(format))
        throw invalid(`format must be one of ${DATA_FORMATS.join(", ")}`, "format");
      if ((await stat(path)).size === 0) throw invalid("the dataset is empty", "file");
      const d = await storeDataset(path, { name, filename, format: format as DataFormat | undefined, field: "data" });
      return c.json({ object: "dataset", ...d }, 201);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  app.get("/v1/datasets", requireScope("read"), (c) => c.json({ object: "list", data: registry.listDatasets().map((d) => ({ object: "dataset", ...d })) }));

  app.get("/v1/datasets/:id", requireScope("read"), (c) => {
    const d = registry.getDataset(c.req.param("id"));
    if (!d) throw notFound(`dataset ${c.req.param("id")} not found`, "id");
    return c.json({ object: "dataset", ...d });
  });

  app.delete("/v1/datasets/:id", requireScope("admin"), async (c) => {
    const d = await registry.deleteDataset(c.req.param("id"));
    return c.json({ object: "dataset.deleted", id: d.id, deleted: true });
  });

  app.post("/v1/fine-tunes", requireScope("train"), limitBody(ctx.limits.maxBodyBytes), async (c) => {
    const o = asObject(await readJson(c));
    const model = str(o, "model", { max: 256 });
    if (model !== undefined && model !== host.id) throw notFound(`model ${JSON.stringify(model)} not found: this server fine-tunes ${host.id}`, "model");
    const params = parseJobParams(o, maxSeq);
    checkJobQueue(jobs, ctx.admission.maxQueued);
    checkJobMemory(params, host.model.config, ctx.admission.budgetBytes);
    if (registry.getAlias(params.adapter_name)) throw conflict(`${params.adapter_name} is an alias; pick another adapter_name`, "adapter_name");
    const datasetRef = str(o, "dataset", { max: 64 });
    const inline = str(o, "data");
    if ((datasetRef === undefined) === (inline === undefined))
      throw invalid(
        "give exactly one of dataset (a registered dataset id or name) and data (the training text inline)",
        datasetRef === undefined ? "dataset" : "data",
      );
    try {
      resolveConfig(finetuneInput({ model: host.dir, data: "data", output: "out", params }));
    } catch (e) {
      if (e instanceof ConfigError) throw invalid(e.message);
      throw e;
    }
    let dataset: Dataset | undefined;
    if (datasetRef !== undefined) {
      dataset = registry.getDataset(datasetRef);
      if (!dataset) throw notFound(`dataset ${datasetRef} not found; upload it with POST /v1/datasets`, "dataset");
    } else {
      const dir = registry.stagingDir("dataset");
      try {
        await writeFile(join(dir, "inline"), inline as string);
        dataset = await storeDataset(join(dir, "inline"), { format: params.data_format ?? undefined, field: "data" });
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    const job = jobs.create(params, dataset.id, c.get("key").id);
    runner.events.publish(job.id, { type: "status", status: job.status });
    runner.enqueue(job.id);
    return c.json(jobs.get(job.id), 201);
  });

  app.get("/v1/fine-tunes", requireScope("read"), (c) => {
    const status = c.req.query("status");
    if (status !== undefined && !(JOB_STATES as readonly string[]).includes(status)) throw invalid(`status must be one of ${JOB_STATES.join(", ")}`, "status");
    const limit = Number(c.req.query("limit") ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw invalid("limit must be an integer in [1, 1000]", "limit");
    return c.json({ object: "list", data: jobs.list({ status: status as JobStatus | undefined, limit }) });
  });

  const jobParam = (c: Context<AppEnv>): Job => {
    const j = jobs.get(c.req.param("id") ?? "");
    if (!j) throw notFound(`fine-tuning job ${c.req.param("id")} not found`, "id");
    return j;
  };

  app.get("/v1/fine-tunes/:id", requireScope("read"), (c) => c.json(jobParam(c)));

  app.post("/v1/fine-tunes/:id/cancel", requireScope("train"), async (c) => {
    const j = jobParam(c);
    const key = c.get("key");
    if (key.scope !== "admin" && j.created_by !== key.id) throw notFound(`fine-tuning job ${j.id} not found`, "id");
    if (TERMINAL.includes(j.status)) throw conflict(`job ${j.id} is already ${j.status}`, "id");
    return c.json(await runner.cancel(j.id));
  });

  app.get("/v1/fine-tunes/:id/metrics", requireScope("read"), async (c) => {
    const j = jobParam(c);
    return c.json({ object: "list", job: j.id, data: await readMetrics(join(runner.outputDir(j.id), "metrics.jsonl")) });
  });

  // SSE: the job, its metrics so far, then live events (status, progress, metrics, info) until it ends.
  app.get("/v1/fine-tunes/:id/events", requireScope("read"), async (c) => {
    const job = jobParam(c);
    const enc = new TextEncoder();
    let unsubscribe = () => {};
    let ping: ReturnType<typeof setInterval> | undefined;
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        let open = true;
        const send = (event: string, data: unknown) => {
          if (open) controller.enqueue(enc.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
        };
        const end = () => {
          if (!open) return;
          send("done", jobs.get(job.id));
          open = false;
          unsubscribe();
          clearInterval(ping);
          controller.close();
        };
        const seen = new Set<string>();
        const key = (r: Record<string, unknown>) => `${r.split}:${r.step}`;
        const live: Record<string, unknown>[] = [];
        let replaying = true;
        unsubscribe = runner.events.subscribe(job.id, (e) => {
          if (e === null) return replaying ? live.push({ type: "__end" }) : end();
          if (replaying) return live.push(e);
          if (e.type === "metrics") {
            if (seen.has(key(e))) return;
            seen.add(key(e));
          }
          send(e.type, e);
        });
        send("job", job);
        for (const r of await readMetrics(join(runner.outputDir(job.id), "metrics.jsonl"))) {
          seen.add(key(r));
          send("metrics", { type: "metrics", ...r });
        }
        replaying = false;
        for (const e of live) {
          if (e.type === "__end") return end();
          if (e.type === "metrics" && seen.has(key(e))) continue;
          send(String(e.type), e);
        }
        if (TERMINAL.includes(jobs.get(job.id)!.status)) return end();
        ping = setInterval(() => open && controller.enqueue(enc.encode(": ping\n\n")), 15_000);
      },
      cancel() {
        unsubscribe();
        clearInterval(ping);
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", "x-accel-buffering": "no" } });
  });

  // ---- API keys (admin)
  app.post("/v1/keys", requireScope("admin"), limitBody(ctx.limits.maxBodyBytes), async (c) => {
    const o = asObject(await readJson(c));
    rejectUnknown(o, ["name", "scope", "max_concurrency"]);
    const name = str(o, "name", { required: true, max: 128 });
    const scope = oneOf(o, "scope", SCOPES, "read") as Scope;
    const maxConcurrency = int(o, "max_concurrency", { def: 4, min: 1, max: 1024 });
    const { key, token } = ctx.keys.create({ name, scope, max_concurrency: maxConcurrency });
    return c.json({ object: "api_key", ...key, key: token }, 201);
  });

  app.get("/v1/keys", requireScope("admin"), (c) => c.json({ object: "list", data: ctx.keys.list().map((k) => ({ object: "api_key", ...k })) }));

  app.delete("/v1/keys/:id", requireScope("admin"), (c) => c.json({ object: "api_key", ...ctx.keys.revoke(c.req.param("id")) }));
}

async function readMetrics(path: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path, "utf8").catch(() => "");
  return text
    .split("\n")
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
}

/** Write a request body to `path` as it arrives (memory: one chunk); 413 past `max` bytes. */
async function streamToFile(body: ReadableStream<Uint8Array> | null, path: string, max: number): Promise<string> {
  const out = createWriteStream(path);
  out.on("error", () => {});
  let total = 0;
  try {
    if (body) {
      for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
        total += chunk.length;
        if (total > max) throw tooLarge(`the dataset is larger than ${max} bytes`, "file");
        if (!out.write(chunk)) await new Promise<void>((r) => out.once("drain", r));
      }
    }
  } finally {
    await new Promise<void>((r) => out.end(() => r()));
  }
  return path;
}
