/**
 * The OpenAI-compatible surface: GET /v1/models, POST /v1/completions, POST /v1/chat/completions,
 * streamed as server-sent events in OpenAI's chunk format ending with `data: [DONE]`. Each
 * response reports the adapter that served it: the `x-lowrank-adapter` header and the `adapter`
 * field (plus `alias` when the request named an alias).
 */
import { randomInt, randomUUID } from "node:crypto";
import type { Hono } from "hono";
import type { ChatMessage } from "@lowrank/trainer/node";
import { type ApiError, errorMessage, internal, invalid, isApiError, withMessage } from "../errors.ts";
import type { GenRequest, GenResult } from "../inference/host.ts";
import { type Route, resolveRoute } from "../inference/router.ts";
import { INLINE_PROMPT_CHARS, promptCharCap } from "../tokenize/cap.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { limitBody, readJson, requireScope } from "./middleware.ts";
import { type Obj, asObject, bool, int, num, str, stringList, typeName } from "./validate.ts";

interface Sampling {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  repetitionPenalty: number;
  seed: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  user: string | undefined;
}

function sampling(o: Obj, maxTokensCap: number, defaultMax: number): Sampling {
  const n = int(o, "n", { def: 1, min: 1 });
  if (n !== 1) throw invalid("n must be 1: one completion per request", "n");
  for (const k of ["presence_penalty", "frequency_penalty"]) {
    if (num(o, k, { def: 0 }) !== 0) throw invalid(`${k} is not supported; use repetition_penalty`, k);
  }
  if (o.logprobs !== undefined && o.logprobs !== null && o.logprobs !== false && o.logprobs !== 0) throw invalid("logprobs is not supported", "logprobs");
  if (o.logit_bias !== undefined && o.logit_bias !== null && Object.keys(asObject(o.logit_bias, "logit_bias")).length)
    throw invalid("logit_bias is not supported", "logit_bias");
  const maxKey = o.max_completion_tokens !== undefined && o.max_completion_tokens !== null ? "max_completion_tokens" : "max_tokens";
  const streamOptions = o.stream_options === undefined || o.stream_options === null ? {} : asObject(o.stream_options, "stream_options");
  return {
    maxTokens: int(o, maxKey, { def: defaultMax, min: 1, max: maxTokensCap }),
    // Below the floor, dividing the logits by the temperature overflows: such requests are greedy.
    temperature: greedyBelowFloor(num(o, "temperature", { def: 1, min: 0, max: 2 })),
    topP: num(o, "top_p", { def: 1, min: 0, max: 1 }),
    topK: int(o, "top_k", { def: 0, min: 0 }),
    repetitionPenalty: num(o, "repetition_penalty", { def: 1, min: 0.01, max: 10 }),
    seed: int(o, "seed", { def: randomInt(2 ** 31), min: 0, max: 2 ** 32 - 1 }),
    stop: stringList(o, "stop", { maxItems: 4, maxLength: 128 }),
    stream: bool(o, "stream", false),
    includeUsage: bool(streamOptions, "include_usage", false, "stream_options"),
    user: str(o, "user", { max: 256 }),
  };
}

/** Temperatures below this are treated as 0 (greedy), as documented in the README. */
export const TEMPERATURE_FLOOR = 1e-3;

export function greedyBelowFloor(t: number): number {
  return t < TEMPERATURE_FLOOR ? 0 : t;
}

function promptOf(o: Obj): string {
  const p = o.prompt;
  if (typeof p === "string") return p;
  if (Array.isArray(p)) {
    if (p.length !== 1 || typeof p[0] !== "string")
      throw invalid("prompt must be a string or an array with exactly one string (batches are not supported)", "prompt");
    return p[0];
  }
  if (p === undefined || p === null) throw invalid("prompt is required", "prompt");
  throw invalid(`prompt must be a string, got ${typeName(p)}`, "prompt");
}

function messagesOf(o: Obj): ChatMessage[] {
  const m = o.messages;
  if (m === undefined || m === null) throw invalid("messages is required", "messages");
  if (!Array.isArray(m)) throw invalid(`messages must be an array, got ${typeName(m)}`, "messages");
  if (m.length === 0 || m.length > 512) throw invalid("messages must have 1-512 entries", "messages");
  return m.map((raw, i) => {
    const f = `messages[${i}]`;
    const e = asObject(raw, f);
    const role = e.role === "developer" ? "system" : e.role;
    if (role !== "system" && role !== "user" && role !== "assistant") throw invalid(`${f}.role must be "system", "user" or "assistant"`, `${f}.role`);
    let content = e.content;
    if (Array.isArray(content)) {
      content = content
        .map((part, j) => {
          const p = asObject(part, `${f}.content[${j}]`);
          if (p.type !== "text" || typeof p.text !== "string")
            throw invalid(`${f}.content[${j}] must be {"type": "text", "text": "..."} (only text is supported)`, `${f}.content[${j}]`);
          return p.text;
        })
        .join("");
    }
    if (typeof content !== "string") throw invalid(`${f}.content must be a string, got ${typeName(content)}`, `${f}.content`);
    return { role, content };
  });
}

function modelOf(o: Obj): string {
  return str(o, "model", { required: true, max: 256 });
}

function adapterHeaders(route: Route): Record<string, string> {
  return {
    "x-lowrank-model": route.model,
    "x-lowrank-adapter": route.adapter?.ref ?? "none",
    ...(route.alias ? { "x-lowrank-alias": route.alias } : {}),
  };
}

function genRequest(ctx: ServerContext, route: Route, ids: number[], s: Sampling, stop: string[]): GenRequest {
  return {
    adapter: route.adapter ? { version: route.adapter, dir: ctx.registry.versionDir(route.adapter.name, route.adapter.version) } : null,
    promptIds: ids,
    maxTokens: s.maxTokens,
    temperature: s.temperature,
    topP: s.topP,
    topK: s.topK,
    repetitionPenalty: s.repetitionPenalty,
    seed: s.seed,
    stop,
  };
}

const usage = (r: GenResult) => ({ prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens });

/** The SSE body: `data: <json>\n\n` per chunk, then `data: [DONE]\n\n`. Cancelling aborts generation. */
function sse(run: (send: (chunk: unknown) => void, signal: AbortSignal) => Promise<void>, ctx: ServerContext): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  const abort = new AbortController();
  return new ReadableStream<Uint8Array>({
    start(controller) {
      const send = (chunk: unknown) => {
        if (!abort.signal.aborted) controller.enqueue(enc.encode(`data: ${JSON.stringify(chunk)}\n\n`));
      };
      void run(send, abort.signal)
        .catch((e: unknown) => {
          if (abort.signal.aborted) return;
          const err: ApiError = isApiError(e) ? withMessage(e, ctx.redact(e.message)) : internal("generation failed; see the server log");
          if (!isApiError(e)) ctx.log(`error: streaming generation: ${errorMessage(e)}`);
          send(err.body());
        })
        .finally(() => {
          if (abort.signal.aborted) return;
          controller.enqueue(enc.encode("data: [DONE]\n\n"));
          controller.close();
        });
    },
    cancel() {
      abort.abort();
    },
  });
}

const SSE_HEADERS = { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive", "x-accel-buffering": "no" };

export function openaiRoutes(app: Hono<AppEnv>, ctx: ServerContext): void {
  const created = () => Math.floor(Date.now() / 1000);
  const fingerprint = `lowrank-${ctx.host.hash.slice(7, 15)}`;

  const maxPos = ctx.host.model.config.max_position_embeddings;
  const charCap = promptCharCap(ctx.host.tokenizer, maxPos);

  app.get("/v1/models", requireScope("read"), (c) => c.json({ object: "list", data: listModels(ctx) }));

  app.post("/v1/completions", requireScope("read"), limitBody(ctx.limits.maxBodyBytes), async (c) => {
    const o = asObject(await readJson(c));
    const model = modelOf(o);
    const prompt = promptOf(o);
    if (o.echo === true) throw invalid("echo is not supported", "echo");
    if (o.suffix !== undefined && o.suffix !== null) throw invalid("suffix is not supported", "suffix");
    const s = sampling(o, ctx.limits.maxTokens, 16);
    const route = resolveRoute(model, ctx.host.id, ctx.registry, { user: s.user });
    const ids = await encodePrompt(ctx, prompt, charCap, "prompt");
    ctx.host.assertCapacity();
    const req = genRequest(ctx, route, ids, s, s.stop);
    const id = `cmpl-${randomUUID().replaceAll("-", "")}`;
    const base = {
      id,
      object: "text_completion",
      created: created(),
      model: route.model,
      system_fingerprint: fingerprint,
      adapter: route.adapter?.ref ?? null,
      alias: route.alias,
    };
    if (!s.stream) {
      const r = await ctx.host.generate({ ...req, signal: c.req.raw.signal });
      return c.json(
        { ...base, choices: [{ text: r.text, index: 0, logprobs: null, finish_reason: r.finishReason }], usage: usage(r) },
        200,
        adapterHeaders(route),
      );
    }
    const body = sse(async (send, signal) => {
      const r = await ctx.host.generate({ ...req, signal }, (text) => send({ ...base, choices: [{ text, index: 0, logprobs: null, finish_reason: null }] }));
      send({ ...base, choices: [{ text: "", index: 0, logprobs: null, finish_reason: r.finishReason }] });
      if (s.includeUsage) send({ ...base, choices: [], usage: usage(r) });
    }, ctx);
    return new Response(body, { headers: { ...SSE_HEADERS, ...adapterHeaders(route) } });
  });

  app.post("/v1/chat/completions", requireScope("read"), limitBody(ctx.limits.maxBodyBytes), async (c) => {
    const o = asObject(await readJson(c));
    const model = modelOf(o);
    const messages = messagesOf(o);
    const chars = messages.reduce((n, m) => n + m.content.length, 0);
    if (chars > charCap) throw tooLongPrompt(ctx, chars, charCap, "messages");
    const s = sampling(o, ctx.limits.maxTokens, 128);
    const route = resolveRoute(model, ctx.host.id, ctx.registry, { user: s.user });
    // Laid out as in training (the model's chat_template, else ChatML); the reply stops at its end-of-turn marker.
    const prompt = ctx.host.chatPrompt(messages, "messages");
    ctx.host.assertCapacity();
    const req = { ...genRequest(ctx, route, prompt.ids, s, [...s.stop, ...prompt.stop]), stopTokens: prompt.stopTokens };
    const id = `chatcmpl-${randomUUID().replaceAll("-", "")}`;
    const base = { id, created: created(), model: route.model, system_fingerprint: fingerprint, adapter: route.adapter?.ref ?? null, alias: route.alias };
    if (!s.stream) {
      const r = await ctx.host.generate({ ...req, signal: c.req.raw.signal });
      return c.json(
        {
          ...base,
          object: "chat.completion",
          choices: [{ index: 0, message: { role: "assistant", content: r.text }, logprobs: null, finish_reason: r.finishReason }],
          usage: usage(r),
        },
        200,
        adapterHeaders(route),
      );
    }
    const chunk = (delta: object, finish: string | null) => ({
      ...base,
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    });
    const body = sse(async (send, signal) => {
      send(chunk({ role: "assistant", content: "" }, null));
      const r = await ctx.host.generate({ ...req, signal }, (text) => send(chunk({ content: text }, null)));
      send(chunk({}, r.finishReason));
      if (s.includeUsage) send({ ...base, object: "chat.completion.chunk", choices: [], usage: usage(r) });
    }, ctx);
    return new Response(body, { headers: { ...SSE_HEADERS, ...adapterHeaders(route) } });
  });
}

function tooLongPrompt(ctx: ServerContext, chars: number, cap: number, field: string) {
  const maxPos = ctx.host.model.config.max_position_embeddings;
  return invalid(
    `the prompt is ${chars} characters: more than this model's context of ${maxPos} tokens can hold (at most ${cap} characters); it was not tokenized`,
    field,
  );
}

/**
 * Tokenize a completion prompt: refused by its length in characters first (no tokenizing), then
 * tokenized inline when short, else in the tokenizer thread; 400 when it leaves no room to generate.
 */
async function encodePrompt(ctx: ServerContext, prompt: string, cap: number, field: string): Promise<number[]> {
  if (prompt.length > cap) throw tooLongPrompt(ctx, prompt.length, cap, field);
  if (prompt.length <= INLINE_PROMPT_CHARS) return ctx.host.encode(prompt, field);
  const ids = await ctx.tokens.encode(prompt);
  const maxPos = ctx.host.model.config.max_position_embeddings;
  if (ids.length >= maxPos) throw invalid(`the prompt is ${ids.length} tokens; this model's context is ${maxPos} tokens`, field);
  return ids;
}

/** The base, every adapter version (plus the floating name at its current version) and every alias. */
export function listModels(ctx: ServerContext): object[] {
  const { host, registry } = ctx;
  const t = Math.floor(ctx.startedAt / 1000);
  const unix = (iso: string) => Math.floor(Date.parse(iso) / 1000);
  const out: object[] = [{ id: host.id, object: "model", created: t, owned_by: "lowrank", lowrank: { kind: "base", weights_hash: host.hash } }];
  for (const a of registry.listAdapters()) {
    for (const v of a.versions) {
      if (v.base_model_hash !== host.hash) continue; // trained on another base: not servable here
      const info = { kind: "adapter", adapter: v.ref, current: v.current, loaded: host.isLoaded(v.id) };
      out.push({ id: `${host.id}:${v.ref}`, object: "model", created: unix(v.created_at), owned_by: "lowrank", parent: host.id, lowrank: info });
      if (v.current)
        out.push({
          id: `${host.id}:${v.name}`,
          object: "model",
          created: unix(v.created_at),
          owned_by: "lowrank",
          parent: host.id,
          lowrank: { ...info, kind: "adapter-current" },
        });
    }
  }
  for (const al of registry.listAliases()) {
    out.push({
      id: `${host.id}:${al.name}`,
      object: "model",
      created: unix(al.created_at),
      owned_by: "lowrank",
      parent: host.id,
      lowrank: { kind: "alias", targets: al.targets },
    });
  }
  return out;
}
