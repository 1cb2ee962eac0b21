/**
 * One base model in memory, its LoRA adapters, and the queue in front of it.
 *
 * The active adapter is state of the model object, so every request that touches the model runs
 * inside `exclusive()`: a one-permit Effect semaphore (FIFO). A request sets its adapter, generates,
 * and only then lets the next one in, so two requests with different adapters never interleave
 * tokens on the same weights. Adapters load on first use and stay cached (LRU by weight bytes).
 */
import { Effect, Semaphore } from "effect";
import type { Backend } from "@lowrank/tensor";
import { type LlamaForCausalLM, TextStream, type TextTokenizer, loadGenerationConfig, loadHfModel, loadTokenizer } from "@lowrank/nn/node";
import { PeftModel, loadAdapter } from "@lowrank/lora/node";
import { type ChatGenerationPrompt, type ChatMessage, chatGenerationPrompt } from "@lowrank/trainer/node";
import { conflict, invalid, unavailable } from "../errors.ts";
import type { AdapterVersion } from "../registry/registry.ts";
import { Batcher, KvBudgetError } from "./batcher.ts";
import { ByteLru } from "./lru.ts";

export interface HostOptions {
  modelDir: string;
  backend: Backend;
  /** The public id of the base model (default: the directory's name). */
  id: string;
  /** sha256 identity of the base weights (registry metadata). */
  hash: string;
  /** Adapter cache capacity in bytes (default 256 MiB). */
  cacheBytes?: number;
  /** Requests allowed to wait for the model before new ones get 503 (default 256). */
  maxQueue?: number;
  /** Load-time notes (half-precision weights widened to f32). */
  log?: (line: string) => void;
  /** Requests decoded together (default 32). */
  maxBatch?: number;
  /** Bytes the batch's KV caches may reach (default 256 MiB). */
  kvBudgetBytes?: number;
}

export interface LoadedAdapter {
  id: number;
  ref: string;
  internal: string;
  bytes: number;
  loadedAt: string;
}

export interface GenRequest {
  /** null: the base model alone. */
  adapter: { version: AdapterVersion; dir: string } | null;
  /** From encode(): the prompt's ids, BOS included. */
  promptIds: number[];
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  repetitionPenalty: number;
  seed: number;
  stop: string[];
  /** Token ids that also end the reply (a chat template's end-of-turn token), besides EOS. */
  stopTokens?: number[];
  signal?: AbortSignal;
}

export interface GenResult {
  text: string;
  finishReason: "stop" | "length";
  promptTokens: number;
  completionTokens: number;
}

export class ModelHost {
  readonly id: string;
  readonly dir: string;
  readonly hash: string;
  readonly backend: Backend;
  readonly model: LlamaForCausalLM;
  readonly tokenizer: TextTokenizer;
  readonly #sem = Semaphore.makeUnsafe(1);
  readonly #maxQueue: number;
  readonly #cache: ByteLru<number, LoadedAdapter>;
  #peft: PeftModel<LlamaForCausalLM> | null = null;
  #pending = 0;
  #closed = false;
  readonly #batcher: Batcher;
  /** Sequences in the batch per adapter (internal name): an evicted adapter stays until they finish. */
  readonly #inUse = new Map<string, number>();
  readonly #retired = new Set<string>();
  /** The adapter and the row adapters the last step ran with (undefined: unknown, after a load or delete). */
  #current: string | null | undefined = undefined;
  #rows: string | null | undefined = undefined;
  /** Requests served, per adapter ref ("" = base); for /v1/cache and tests. */
  readonly served = new Map<string, number>();

  /** Stop tokens besides config.json's: the tokenizer's EOS and generation_config.json's (Llama 3's <|eot_id|>). */
  readonly #eos: number[];

  private constructor(o: HostOptions, model: LlamaForCausalLM, tokenizer: TextTokenizer, genEos: readonly number[]) {
    this.id = o.id;
    this.dir = o.modelDir;
    this.hash = o.hash;
    this.backend = o.backend;
    this.model = model;
    this.tokenizer = tokenizer;
    this.#eos = [...new Set([...model.config.eos_token_id, ...genEos, ...(tokenizer.eosTokenId === null ? [] : [tokenizer.eosTokenId])])];
    this.#maxQueue = o.maxQueue ?? 256;
    this.#cache = new ByteLru(o.cacheBytes ?? 256 * 2 ** 20, (_, a) => this.#evict(a.internal));
    this.#batcher = new Batcher(
      {
        model,
        // Switching is a walk over the model: skipped when nothing changed since the last step.
        useAdapter: (a) => {
          if (this.#peft && this.#current !== a) this.#peft.setAdapter(a ?? []);
          this.#current = a;
        },
        useRowAdapters: (rows) => {
          const key = rows ? rows.join("\u0000") : null;
          if (this.#peft && key === this.#rows) return;
          if (this.#peft) this.#peft.setRowAdapters(rows);
          else if (rows?.some((r) => r !== null)) throw new Error("row adapters without any adapter loaded");
          this.#rows = key;
        },
        rowBatchable: (a) => (this.#peft as PeftModel<LlamaForCausalLM>).rowBatchable(a),
        locked: (fn) => Effect.runPromise(this.#sem.withPermits(1)(Effect.tryPromise({ try: fn, catch: (e) => e }))),
      },
      { maxBatch: o.maxBatch, kvBudgetBytes: o.kvBudgetBytes },
    );
  }

  static async load(o: HostOptions): Promise<ModelHost> {
    const tokenizer = await loadTokenizer(o.modelDir);
    const gen = await loadGenerationConfig(o.modelDir);
    const model = await loadHfModel(o.modelDir, { backend: o.backend, dtype: "f32", log: o.log });
    model.eval();
    model.setRequiresGrad(false);
    return new ModelHost(o, model, tokenizer, gen?.eos_token_id ?? []);
  }

  get queued(): number {
    return this.#pending;
  }

  get cacheCapacity(): number {
    return this.#cache.capacity;
  }

  /** Run `fn` alone on the model, after every request queued before it. */
  exclusive<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (this.#closed) return Promise.reject(unavailable("the server is shutting down"));
    if (this.#pending >= this.#maxQueue) return Promise.reject(unavailable(`the model queue is full (${this.#maxQueue} requests waiting); retry later`));
    this.#pending++;
    const run = Effect.tryPromise({
      try: () => {
        this.#pending--;
        if (signal?.aborted) return Promise.reject(invalid("the client closed the request while it was queued"));
        return fn();
      },
      catch: (e) => e,
    });
    return Effect.runPromise(this.#sem.withPermits(1)(run));
  }

  /** Let every queued request finish, refuse new ones, free the model (idempotent). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#batcher.idle();
    await Effect.runPromise(this.#sem.withPermits(1)(Effect.void));
    this.#cache.clear();
    this.model.dispose();
  }

  loaded(): LoadedAdapter[] {
    return this.#cache.entries().map(([, a]) => a);
  }

  isLoaded(id: number): boolean {
    return this.#cache.has(id);
  }

  /** Load into the cache (hot-load). Call inside exclusive(). */
  async ensureLoaded(v: AdapterVersion, dir: string): Promise<LoadedAdapter> {
    const hit = this.#cache.get(v.id);
    if (hit) return hit;
    if (v.base_model_hash !== this.hash) {
      throw conflict(
        `${v.ref} was trained on base ${v.base_model} (${v.base_model_hash.slice(0, 19)}...), not on the served ${this.id} (${this.hash.slice(0, 19)}...)`,
        "model",
      );
    }
    const internal = `v${v.id}`;
    // Evicted while sequences still used it: it is still loaded; take it back into the cache.
    if (this.#retired.delete(internal)) return this.#cached(v, internal);
    this.#current = this.#rows = undefined;
    try {
      this.#peft = await loadAdapter<LlamaForCausalLM>(this.#peft ?? this.model, dir, internal, { ignoreBaseModel: true, warn: () => {} });
    } catch (e) {
      throw conflict(`${v.ref} does not load onto ${this.id}: ${(e as Error).message.split("\n")[0]}`, "model");
    } finally {
      this.model.eval();
    }
    return this.#cached(v, internal);
  }

  #cached(v: AdapterVersion, internal: string): LoadedAdapter {
    let bytes = 0;
    for (const [, layer] of (this.#peft as PeftModel<LlamaForCausalLM>).loraLayers()) for (const t of layer.adapterParameters(internal)) bytes += t.size * 4;
    const entry: LoadedAdapter = { id: v.id, ref: v.ref, internal, bytes, loadedAt: new Date().toISOString() };
    this.#cache.set(v.id, entry, bytes);
    return entry;
  }

  /** Drop from the cache (hot-unload). Call inside exclusive(). */
  unload(id: number): boolean {
    return this.#cache.delete(id);
  }

  /** Validate adapter files against this base without keeping them: load under a scratch name, then delete. */
  async check(dir: string): Promise<void> {
    const scratch = `check${Date.now()}`;
    this.#current = this.#rows = undefined;
    try {
      this.#peft = await loadAdapter<LlamaForCausalLM>(this.#peft ?? this.model, dir, scratch, { ignoreBaseModel: true, warn: () => {} });
    } catch (e) {
      throw invalid(`the adapter does not fit base model ${this.id}: ${(e as Error).message}`, "adapter_model.safetensors");
    } finally {
      this.model.eval();
    }
    this.#peft.deleteAdapter(scratch);
  }

  /**
   * The chat prompt as the model was trained on it: its tokenizer's chat_template (generation prompt
   * added), else ChatML (`layout` says which; the server logs it once at start). 400 when it leaves
   * no room to generate.
   */
  chatPrompt(messages: ChatMessage[], field: string): ChatGenerationPrompt {
    let p: ChatGenerationPrompt;
    try {
      p = chatGenerationPrompt(this.tokenizer, messages);
    } catch (e) {
      // A template's raise_exception (say, "roles must alternate user/assistant") is the client's to fix;
      // the cause alone, so the server's paths stay out of the reply.
      const cause = (e as Error).cause;
      throw invalid(`the model's chat template refused the messages: ${cause instanceof Error ? cause.message : (e as Error).message}`, field);
    }
    this.#checkLength(p.ids, field);
    return p;
  }

  /** How the chat prompt is laid out, for the start-up log. */
  get chatLayout(): string {
    const t = this.tokenizer.chatTemplate;
    return t ? `the model's chat_template (${t.file})` : "ChatML (the tokenizer has no chat_template)";
  }

  /** Tokenize a prompt (BOS included); 400 when it leaves no room to generate. */
  encode(prompt: string, field: string): number[] {
    const ids = this.tokenizer.encode(prompt);
    this.#checkLength(ids, field);
    return ids;
  }

  #checkLength(ids: readonly number[], field: string): void {
    const maxPos = this.model.config.max_position_embeddings;
    if (ids.length >= maxPos) throw invalid(`the prompt is ${ids.length} tokens; this model's context is ${maxPos} tokens`, field);
  }

  /** 503 now rather than after the response has started (streams). */
  assertCapacity(): void {
    if (this.#closed) throw unavailable("the server is shutting down");
    if (this.#pending >= this.#maxQueue) throw unavailable(`the model queue is full (${this.#maxQueue} requests waiting); retry later`);
  }

  /**
   * Generate for one request: it joins the continuous batch (batcher.ts) and shares each decode step
   * with the other requests in flight, whatever their adapters. `onText` gets each piece of text as
   * soon as it is safe to emit (a piece that could be the start of a stop string is held back).
   */
  async generate(req: GenRequest, onText?: (text: string) => void): Promise<GenResult> {
    if (this.#closed) throw unavailable("the server is shutting down");
    if (this.#batcher.size + this.#pending >= this.#maxQueue) throw unavailable(`the model queue is full (${this.#maxQueue} requests waiting); retry later`);
    const ids = req.promptIds;
    const maxNew = Math.min(req.maxTokens, this.model.config.max_position_embeddings - ids.length);
    // The adapter: a cached one at once (no wait for the batch's lock, so the request joins the next
    // step), else loaded under the lock; pinned until the sequence leaves the batch (in the same
    // synchronous turn as the lookup, so no eviction can come between).
    const pin = (a: LoadedAdapter) => {
      this.#inUse.set(a.internal, (this.#inUse.get(a.internal) ?? 0) + 1);
      return a.internal;
    };
    const v = req.adapter?.version;
    const hit = v ? this.#cache.get(v.id) : undefined;
    const internal = !req.adapter ? null : hit ? pin(hit) : await this.exclusive(async () => pin(await this.ensureLoaded(v!, req.adapter!.dir)), req.signal);
    const key = req.adapter?.version.ref ?? "";
    this.served.set(key, (this.served.get(key) ?? 0) + 1);
    // Text grows by each new token's piece (TextStream decodes a window of the last few ids, so a
    // byte-fallback piece waits for the rest of its character); stop strings are searched in the tail.
    const stream = new TextStream(this.tokenizer);
    const stopLen = maxLen(req.stop);
    let completion = 0;
    let text = "";
    let emitted = 0;
    const emit = (upTo: number) => {
      if (upTo > emitted) {
        onText?.(text.slice(emitted, upTo));
        emitted = upTo;
      }
    };
    const grow = (piece: string): boolean => {
      if (!piece) return true;
      const from = Math.max(0, text.length - stopLen + 1);
      text += piece;
      const hit = findStop(text, req.stop, from);
      if (hit >= 0) {
        text = text.slice(0, hit);
        emit(hit);
        return false;
      }
      emit(text.length - heldBack(text, req.stop));
      return true;
    };
    const r = await this.#batcher
      .run({
        adapter: internal,
        promptIds: ids,
        maxNewTokens: maxNew,
        temperature: req.temperature,
        topP: req.topP,
        topK: req.topK,
        repetitionPenalty: req.repetitionPenalty,
        seed: req.seed,
        stopTokens: new Set([...this.#eos, ...(req.stopTokens ?? [])]),
        signal: req.signal,
        onToken: (id) => {
          completion++;
          return grow(stream.push(id));
        },
        onEnd: () => internal && this.#release(internal),
      })
      .catch((e) => {
        if (!(e instanceof KvBudgetError)) throw e;
        if (internal) this.#release(internal); // refused before joining: onEnd will not run
        throw invalid(e.message, "max_tokens");
      });
    // The rest: a character left partial at the end decodes to U+FFFD, as a whole-completion decode gives it.
    const stopped = r.stopped || !grow(stream.flush());
    if (!stopped) emit(text.length);
    const finish: GenResult["finishReason"] = stopped || completion < maxNew ? "stop" : "length";
    return { text, finishReason: finish, promptTokens: ids.length, completionTokens: completion };
  }

  /** Decode steps and the rows they carried (how much batching happened). */
  get batchStats(): { steps: number; rows: number; maxRows: number } {
    return { ...this.#batcher.stats };
  }

  /** A sequence with this adapter left the batch: drop the adapter if it was evicted meanwhile. */
  #release(internal: string): void {
    const n = (this.#inUse.get(internal) ?? 1) - 1;
    if (n > 0) return void this.#inUse.set(internal, n);
    this.#inUse.delete(internal);
    if (this.#retired.delete(internal)) this.#drop(internal);
  }

  /** The LRU let go of an adapter: delete it now, or when its last sequence leaves the batch. */
  #evict(internal: string): void {
    if (this.#inUse.has(internal)) this.#retired.add(internal);
    else this.#drop(internal);
  }

  #drop(internal: string): void {
    this.#current = this.#rows = undefined;
    this.#peft?.deleteAdapter(internal);
  }
}

function maxLen(stops: string[]): number {
  return stops.reduce((m, s) => Math.max(m, s.length), 0);
}

/** Index of the earliest stop string in `text` at or after `from`, or -1. */
export function findStop(text: string, stops: string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s, from);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of a stop string (not yet safe to emit). */
export function heldBack(text: string, stops: string[]): number {
  let hold = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > hold; k--) {
      if (text.endsWith(s.slice(0, k))) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}
