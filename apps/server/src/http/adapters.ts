/**
 * Registry routes: upload (multipart PEFT files), list, versions, delete, rollback, aliases,
 * download as a tar of PEFT files, export a merged model, and hot load/unload into the cache.
 */
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Context, Hono } from "hono";
import { mergeAndSave } from "@lowrank/lora/node";
import { conflict, errorMessage, invalid, notFound, unsupportedMedia } from "../errors.ts";
import { checkConfigText, checkWeightsFile, headerCheckCovers } from "../registry/adapter-check.ts";
import { checkName, checkVersion } from "../registry/names.ts";
import { type AdapterVersion, type AliasTarget, CONFIG_FILE, WEIGHTS_FILE } from "../registry/registry.ts";
import { bytesEntry, dirEntries, fileEntry, tarSize, tarStream } from "../tar.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { limitBody, readJson, requireScope } from "./middleware.ts";
import { readMultipart } from "./multipart.ts";
import { asObject, bool, int, num, parseJson, rejectUnknown, str } from "./validate.ts";

/** The `:version` path parameter: a number or "current". */
function versionParam(c: Context<AppEnv>): number | null {
  const v = c.req.param("version") ?? "";
  return v === "current" ? null : checkVersion(v, "version");
}

function nameParam(c: Context<AppEnv>, key = "name"): string {
  return checkName(c.req.param(key), key);
}

/** Text field of a multipart form ("" and absent are the same). */
function formText(form: Record<string, string>, key: string, max: number): string | undefined {
  const v = form[key];
  if (v === undefined || v === "") return undefined;
  if (v.length > max) throw invalid(`${key} is longer than ${max} characters`, key);
  return v;
}

function formJsonObject(form: Record<string, string>, key: string): Record<string, unknown> | undefined {
  const t = formText(form, key, 64 * 1024);
  if (t === undefined) return undefined;
  return asObject(parseJson(t, key), key);
}

const UPLOAD_FIELDS = ["name", CONFIG_FILE, WEIGHTS_FILE, "description", "dataset_hash", "hyperparameters", "eval_metrics", "activate"];

export function adapterRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const { registry, host } = ctx;
  const view = (v: AdapterVersion) => ({ object: "adapter.version", ...v, model: `${host.id}:${v.ref}`, loaded: host.isLoaded(v.id) });

  app.post("/v1/adapters", requireScope("train"), limitBody(ctx.limits.maxUploadBytes), async (c) => {
    const type = c.req.header("content-type") ?? "";
    if (!type.startsWith("multipart/form-data")) {
      throw unsupportedMedia(`upload an adapter as multipart/form-data with fields name, ${CONFIG_FILE} (file) and ${WEIGHTS_FILE} (file)`);
    }
    // The body streams into a staging directory (memory: one network chunk), then every check runs on the files.
    const staged = registry.stagingDir("upload");
    try {
      const { fields, files } = await readMultipart(c.req.raw.body, type, {
        dir: staged,
        allowed: UPLOAD_FIELDS,
        fileFields: [CONFIG_FILE, WEIGHTS_FILE],
        maxBytes: ctx.limits.maxUploadBytes,
      });
      const name = checkName(formText(fields, "name", 64) ?? null, "name");
      if (registry.getAlias(name)) throw conflict(`${name} is an alias; adapters and aliases share one namespace`, "name");
      const datasetHash = formText(fields, "dataset_hash", 100);
      if (datasetHash !== undefined && !/^(sha256:)?[0-9a-f]{64}$/.test(datasetHash))
        throw invalid("dataset_hash must be a sha256 hex digest (optionally prefixed sha256:)", "dataset_hash");
      const activate = formText(fields, "activate", 5);
      if (activate !== undefined && activate !== "true" && activate !== "false") throw invalid("activate must be true or false", "activate");
      const hyperparameters = formJsonObject(fields, "hyperparameters");
      const evalMetrics = formJsonObject(fields, "eval_metrics");
      const description = formText(fields, "description", 2000);
      for (const f of [CONFIG_FILE, WEIGHTS_FILE]) {
        if (!files[f]) throw invalid(`${f} is required as a file field (curl -F '${f}=@path/to/${f}')`, f);
      }
      if (files[CONFIG_FILE].size > 1 << 20) throw invalid(`${CONFIG_FILE} is ${files[CONFIG_FILE].size} bytes; the limit is 1 MiB`, CONFIG_FILE);
      const { json: config, config: lora } = checkConfigText(await readFile(files[CONFIG_FILE].path, "utf8"));
      // Header, keys, shapes against the served base (lora's injection plan) and finite values, read in chunks.
      await checkWeightsFile(files[WEIGHTS_FILE].path, lora, host.model);
      // bias or modules_to_save: the header check does not cover them; a trial load does (under the model's queue).
      if (!headerCheckCovers(lora)) await host.exclusive(() => host.check(staged));
      const v = await registry.addVersion({
        name,
        stagedDir: staged,
        base_model: host.id,
        base_model_hash: host.hash,
        dataset_hash: datasetHash ? (datasetHash.startsWith("sha256:") ? datasetHash : `sha256:${datasetHash}`) : null,
        hyperparameters: hyperparameters ?? {
          r: config.r,
          lora_alpha: config.lora_alpha,
          target_modules: config.target_modules,
          lora_dropout: config.lora_dropout,
        },
        eval_metrics: evalMetrics ?? {},
        source: `upload:${c.get("key").id}`,
        description: description ?? null,
        activate: activate !== "false",
      });
      return c.json(view(v), 201);
    } finally {
      await rm(staged, { recursive: true, force: true }); // gone already when addVersion moved it
    }
  });

  app.get("/v1/adapters", requireScope("read"), (c) =>
    c.json({ object: "list", data: registry.listAdapters().map((a) => ({ object: "adapter", ...a, versions: a.versions.map(view) })) }),
  );

  app.get("/v1/adapters/:name", requireScope("read"), (c) => {
    const name = nameParam(c);
    const a = registry.listAdapters().find((x) => x.name === name);
    if (!a) registry.resolve(name, null, "name"); // throws the 404
    return c.json({ object: "adapter", ...a, versions: a!.versions.map(view) });
  });

  app.get("/v1/adapters/:name/versions/:version", requireScope("read"), (c) => c.json(view(registry.resolve(nameParam(c), versionParam(c), "version"))));

  app.delete("/v1/adapters/:name/versions/:version", requireScope("admin"), async (c) => {
    const name = nameParam(c);
    const version = versionParam(c) ?? registry.resolve(name, null, "version").version;
    const v = await registry.deleteVersion(name, version);
    return c.json({ object: "adapter.version.deleted", deleted: true, adapter: v.ref, current_version: registry.getVersion(name)?.version ?? null });
  });

  app.delete("/v1/adapters/:name", requireScope("admin"), async (c) => {
    const removed = await registry.deleteAdapter(nameParam(c));
    return c.json({ object: "adapter.deleted", deleted: true, versions: removed.map((v) => v.ref) });
  });

  app.post("/v1/adapters/:name/rollback", requireScope("admin"), limitBody(ctx.limits.maxBodyBytes), async (c) => {
    const name = nameParam(c);
    const text = await c.req.text();
    const o = text.trim() ? asObject(parseJson(text)) : {};
    rejectUnknown(o, ["to", "delete"]);
    const to = int(o, "to", { min: 1 });
    const r = await registry.rollback(name, { to, deleteCurrent: bool(o, "delete", false) });
    return c.json({ object: "adapter.rollback", adapter: name, current: view(r.current), previous_version: r.previous, deleted: r.deleted?.ref ?? null });
  });

  app.get("/v1/adapters/:name/versions/:version/download", requireScope("read"), async (c) => {
    const v = registry.resolve(nameParam(c), versionParam(c), "version");
    const dir = registry.versionDir(v.name, v.version);
    const root = `${v.name}-v${v.version}`;
    const meta = JSON.stringify({ ...v, current: undefined, model: `${host.id}:${v.ref}` }, null, 2) + "\n";
    const entries = [
      { name: `${root}/`, size: 0, mode: 0o755 },
      await fileEntry(join(dir, CONFIG_FILE), `${root}/${CONFIG_FILE}`),
      await fileEntry(join(dir, WEIGHTS_FILE), `${root}/${WEIGHTS_FILE}`),
      bytesEntry(`${root}/lowrank.json`, meta, new Date(v.created_at)),
    ];
    return new Response(tarStream(entries), { headers: tarHeaders(`${root}.tar`, tarSize(entries), v) });
  });

  // Merged model: base + adapter folded together (lora's mergeAndSave), streamed as a tar, then removed.
  app.post("/v1/adapters/:name/versions/:version/export", requireScope("admin"), async (c) => {
    const v = registry.resolve(nameParam(c), versionParam(c), "version");
    const out = registry.stagingDir("export");
    try {
      await mergeAndSave(host.dir, registry.versionDir(v.name, v.version), out, { backend: host.backend, ignoreBaseModel: true });
    } catch (e) {
      await rm(out, { recursive: true, force: true });
      throw conflict(`merging ${v.ref} into ${host.id} failed: ${errorMessage(e)}`, "version");
    }
    const root = `${host.id}-${v.name}-v${v.version}-merged`;
    const entries = await dirEntries(out, root);
    const cleanup = () => rm(out, { recursive: true, force: true });
    return new Response(tarStream(entries, cleanup), { headers: tarHeaders(`${root}.tar`, tarSize(entries), v) });
  });

  app.post("/v1/adapters/:name/versions/:version/load", requireScope("admin"), async (c) => {
    const v = registry.resolve(nameParam(c), versionParam(c), "version");
    const t0 = performance.now();
    const a = await host.exclusive(() => host.ensureLoaded(v, registry.versionDir(v.name, v.version)));
    return c.json({ object: "adapter.loaded", adapter: v.ref, bytes: a.bytes, ms: Math.round(performance.now() - t0), cache: cacheView(ctx) });
  });

  app.post("/v1/adapters/:name/versions/:version/unload", requireScope("admin"), async (c) => {
    const v = registry.resolve(nameParam(c), versionParam(c), "version");
    const was = await host.exclusive(async () => host.unload(v.id));
    return c.json({ object: "adapter.unloaded", adapter: v.ref, was_loaded: was, cache: cacheView(ctx) });
  });

  app.get("/v1/cache", requireScope("admin"), (c) => c.json(cacheView(ctx)));

  // ---- aliases (A/B routing)
  app.get("/v1/aliases", requireScope("read"), (c) => c.json({ object: "list", data: registry.listAliases().map(aliasView) }));

  app.get("/v1/aliases/:alias", requireScope("read"), (c) => {
    const name = nameParam(c, "alias");
    const a = registry.getAlias(name);
    if (!a) throw notFound(`alias ${name} not found`, "alias");
    return c.json(aliasView(a));
  });

  app.put("/v1/aliases/:alias", requireScope("admin"), limitBody(ctx.limits.maxBodyBytes), async (c) => {
    const name = nameParam(c, "alias");
    const o = asObject(await readJson(c));
    rejectUnknown(o, ["targets"]);
    if (!Array.isArray(o.targets) || o.targets.length < 1 || o.targets.length > 16)
      throw invalid("targets must be an array of 1-16 {adapter, weight} objects", "targets");
    const targets: AliasTarget[] = o.targets.map((raw, i) => {
      const prefix = `targets[${i}]`;
      const t = asObject(raw, prefix);
      rejectUnknown(t, ["adapter", "weight"], prefix);
      const adapter = str(t, "adapter", { required: true, max: 80, prefix });
      const [n, ver] = adapter.split("@");
      checkName(n, `${prefix}.adapter`);
      if (ver !== undefined) checkVersion(ver, `${prefix}.adapter`);
      const weight = num(t, "weight", { def: 1, min: 0, max: 1e6, prefix });
      return { adapter, weight };
    });
    if (!targets.some((t) => t.weight > 0)) throw invalid("at least one target needs a weight above 0", "targets");
    return c.json(aliasView(registry.setAlias(name, targets)));
  });

  app.delete("/v1/aliases/:alias", requireScope("admin"), (c) => {
    const name = nameParam(c, "alias");
    registry.deleteAlias(name);
    return c.json({ object: "alias.deleted", name, deleted: true });
  });

  function aliasView(a: ReturnType<typeof registry.listAliases>[number]) {
    const total = a.targets.reduce((s, t) => s + t.weight, 0);
    return { object: "alias", ...a, model: `${host.id}:${a.name}`, targets: a.targets.map((t) => ({ ...t, share: total ? t.weight / total : 0 })) };
  }
}

function tarHeaders(filename: string, size: number, v: AdapterVersion): Record<string, string> {
  return {
    "content-type": "application/x-tar",
    "content-length": String(size),
    "content-disposition": `attachment; filename="${filename}"`,
    "x-lowrank-adapter": v.ref,
    "x-lowrank-sha256": v.sha256,
  };
}

export function cacheView(ctx: ServerContext) {
  const loaded = ctx.host.loaded();
  return {
    object: "adapter.cache",
    capacity_bytes: ctx.host.cacheCapacity,
    used_bytes: loaded.reduce((s, a) => s + a.bytes, 0),
    queued_requests: ctx.host.queued,
    // Continuous batching: decode steps so far, the sequences they carried, the largest batch.
    batching: { decode_steps: ctx.host.batchStats.steps, sequence_steps: ctx.host.batchStats.rows, max_batch: ctx.host.batchStats.maxRows },
    loaded: loaded.map((a) => ({ adapter: a.ref, bytes: a.bytes, loaded_at: a.loadedAt })),
  };
}
