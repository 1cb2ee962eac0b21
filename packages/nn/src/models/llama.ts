/**
 * The Llama family (Llama 1-3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM) built from a Hugging Face
 * config.json (parsed in llama-config.ts). The families differ only in switches the config sets:
 * q/k/v (and o) biases, Qwen3's per-head q/k RMSNorm, sliding-window layers, RoPE scaling, a
 * tied head. Module names are exactly HF's (model.layers.N.self_attn.q_proj, ...)
 * so safetensors checkpoints and PEFT adapter keys map one to one.
 *
 * Shapes: B batch, T new positions, S cached + new positions, C hidden, nh query heads,
 * nkv key/value heads, hs head size, V vocab.
 */
import {
  type DecodeCache,
  type RopeTables,
  type Tensor,
  attention,
  attentionDecode,
  concat,
  crossEntropy,
  embedding,
  linearCrossEntropy,
  noGrad,
  rope,
  ropeTables,
  scope,
  swiglu,
  tensor,
} from "@lowrank/tensor";
import { KVCache, type KVCacheOptions } from "../kv-cache.ts";
import { Embedding, Linear, RMSNorm } from "../layers.ts";
import { Module, ModuleList, type ParamOptions, type TensorModule } from "../module.ts";
import { slidingWindowAttention } from "./attention.ts";
import { type LlamaConfig, ropeInvFreq } from "./llama-config.ts";

export {
  type LayerType,
  type LlamaConfig,
  type ModelType,
  type RopeScaling,
  SUPPORTED_TYPES,
  llamaConfigToHf,
  parseLlamaConfig,
  ropeInvFreq,
} from "./llama-config.ts";
export { slidingWindowAttention } from "./attention.ts";

// ---------------------------------------------------------------- modules

/** What a layer needs besides its input: rotary tables, the first position, and the cache slot. */
export interface LayerContext {
  rope: RopeTables;
  positionOffset: number;
  cache?: KVCache;
  layer: number;
  /**
   * A step over several sequences (continuous batching): the input is (1, L, C), the new tokens of
   * every sequence laid end to end; segment i is `lengths[i]` tokens that attend causally over their
   * own `caches[i]`. `rope` then holds one table row per token (its position) and positionOffset is 0.
   */
  segments?: { caches: readonly KVCache[]; lengths: readonly number[] };
}

export class LlamaAttention extends Module {
  q_proj: TensorModule;
  k_proj: TensorModule;
  v_proj: TensorModule;
  o_proj: TensorModule;
  /** Qwen3 only: RMSNorm over head_dim of each query/key head, before RoPE. */
  q_norm: RMSNorm | null;
  k_norm: RMSNorm | null;
  readonly nh: number;
  readonly nkv: number;
  readonly hs: number;
  /** Keys a query sees in this layer (its own included); null for full causal attention. */
  readonly window: number | null;

  constructor(cfg: LlamaConfig, opts: ParamOptions, layer = 0) {
    super();
    this.nh = cfg.num_attention_heads;
    this.nkv = cfg.num_key_value_heads;
    this.hs = cfg.head_dim;
    this.window = cfg.layer_types[layer] === "sliding_attention" ? cfg.sliding_window : null;
    const C = cfg.hidden_size;
    this.q_proj = this.registerModule("q_proj", new Linear(C, this.nh * this.hs, { ...opts, bias: cfg.qkv_bias }));
    this.k_proj = this.registerModule("k_proj", new Linear(C, this.nkv * this.hs, { ...opts, bias: cfg.qkv_bias }));
    this.v_proj = this.registerModule("v_proj", new Linear(C, this.nkv * this.hs, { ...opts, bias: cfg.qkv_bias }));
    this.o_proj = this.registerModule("o_proj", new Linear(this.nh * this.hs, C, { ...opts, bias: cfg.o_proj_bias }));
    const normOpts = { ...opts, eps: cfg.rms_norm_eps };
    this.q_norm = cfg.qk_norm ? this.registerModule("q_norm", new RMSNorm(this.hs, normOpts)) : null;
    this.k_norm = cfg.qk_norm ? this.registerModule("k_norm", new RMSNorm(this.hs, normOpts)) : null;
  }

  /** x (B, T, C) -> (B, T, C) */
  forward(x: Tensor, ctx: LayerContext): Tensor {
    return scope(() => {
      const [B, T] = x.shape;
      const split = (t: Tensor, n: number, norm: RMSNorm | null) => {
        const h = t.reshape([B, T, n, this.hs]); // (B, T, n, hs)
        return (norm ? norm.forward(h) : h).permute([0, 2, 1, 3]); // (B, n, T, hs)
      };
      const q = rope(split(this.q_proj.forward(x), this.nh, this.q_norm), ctx.rope, ctx.positionOffset); // (B, nh, T, hs)
      let k = rope(split(this.k_proj.forward(x), this.nkv, this.k_norm), ctx.rope, ctx.positionOffset); // (B, nkv, T, hs)
      let v = split(this.v_proj.forward(x), this.nkv, null); // (B, nkv, T, hs)
      if (ctx.segments) return this.o_proj.forward(this.#attendEach(q, k, v, ctx.segments, ctx.layer).reshape([B, T, this.nh * this.hs]));
      if (ctx.cache) [k, v] = ctx.cache.update(ctx.layer, k, v); // (B, nkv, S, hs)
      // (B, nh, T, hs); queries are the last T of S positions
      const y = this.window === null ? attention(q, k, v) : slidingWindowAttention(q, k, v, this.window);
      return this.o_proj.forward(y.permute([0, 2, 1, 3]).reshape([B, T, this.nh * this.hs]));
    });
  }

  /**
   * The attention of a step over several sequences: q, k, v (1, n, L, hs), the "time" axis holding
   * each segment's new tokens in turn; each segment appends to and attends over its own cache.
   * Every sequence that adds one token to a cache held in place goes through one attentionDecode
   * call, whatever else the step carries, so its numbers never depend on its neighbours; prompts and
   * sliding windows append and attend one by one. Returns (1, L, nh, hs).
   */
  #attendEach(q: Tensor, k: Tensor, v: Tensor, seg: NonNullable<LayerContext["segments"]>, layer: number): Tensor {
    const starts: number[] = [];
    for (let i = 0, at = 0; i < seg.lengths.length; at += seg.lengths[i++]) starts.push(at);
    const slots = seg.caches.map((c, i) => (this.window === null && seg.lengths[i] === 1 ? c.slot(layer) : null));
    const dec = slots.flatMap((s, i) => (s ? [i] : []));
    const all = dec.length === seg.caches.length;
    let decoded: Tensor | null = null; // (1, nh, decoding sequences, hs)
    if (dec.length) {
      const pick = (t: Tensor) =>
        all
          ? t
          : rowsAt(
              t,
              dec.map((i) => starts[i]),
            );
      decoded = attentionDecode(
        pick(q),
        pick(k),
        pick(v),
        dec.map((i) => slots[i] as DecodeCache),
      );
      if (all) return decoded.permute([0, 2, 1, 3]); // (1, N, nh, hs)
    }
    const ys = seg.caches.map((cache, i) => {
      if (slots[i]) return (decoded as Tensor).narrow(2, dec.indexOf(i), 1);
      const [t0, T] = [starts[i], seg.lengths[i]];
      const [K, V] = cache.update(layer, k.narrow(2, t0, T), v.narrow(2, t0, T)); // (1, nkv, S_i, hs)
      const qi = q.narrow(2, t0, T);
      return this.window === null ? attention(qi, K, V) : slidingWindowAttention(qi, K, V, this.window); // (1, nh, T_i, hs)
    });
    return (ys.length === 1 ? ys[0] : concat(ys, 2)).permute([0, 2, 1, 3]); // (1, L, nh, hs)
  }
}

/** Positions `at` of axis 2 of t (1, n, L, hs), in order: one view when they are consecutive. */
function rowsAt(t: Tensor, at: readonly number[]): Tensor {
  if (at.every((p, i) => p === at[0] + i)) return t.narrow(2, at[0], at.length);
  return concat(
    at.map((p) => t.narrow(2, p, 1)),
    2,
  );
}

/** SwiGLU: down(silu(gate(x)) * up(x)). */
export class LlamaMLP extends Module {
  gate_proj: TensorModule;
  up_proj: TensorModule;
  down_proj: TensorModule;

  constructor(cfg: LlamaConfig, opts: ParamOptions) {
    super();
    const C = cfg.hidden_size;
    const H = cfg.intermediate_size;
    this.gate_proj = this.registerModule("gate_proj", new Linear(C, H, { ...opts, bias: cfg.mlp_bias }));
    this.up_proj = this.registerModule("up_proj", new Linear(C, H, { ...opts, bias: cfg.mlp_bias }));
    this.down_proj = this.registerModule("down_proj", new Linear(H, C, { ...opts, bias: cfg.mlp_bias }));
  }

  forward(x: Tensor): Tensor {
    return scope(() => this.down_proj.forward(swiglu(this.gate_proj.forward(x), this.up_proj.forward(x))));
  }
}

/** Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)). */
export class LlamaDecoderLayer extends Module {
  input_layernorm: RMSNorm;
  self_attn: LlamaAttention;
  post_attention_layernorm: RMSNorm;
  mlp: LlamaMLP;

  constructor(cfg: LlamaConfig, opts: ParamOptions, layer = 0) {
    super();
    const normOpts = { ...opts, eps: cfg.rms_norm_eps };
    this.input_layernorm = this.registerModule("input_layernorm", new RMSNorm(cfg.hidden_size, normOpts));
    this.self_attn = this.registerModule("self_attn", new LlamaAttention(cfg, opts, layer));
    this.post_attention_layernorm = this.registerModule("post_attention_layernorm", new RMSNorm(cfg.hidden_size, normOpts));
    this.mlp = this.registerModule("mlp", new LlamaMLP(cfg, opts));
  }

  forward(x: Tensor, ctx: LayerContext): Tensor {
    return scope(() => {
      const [h, normed] = this.post_attention_layernorm.forwardResidual(x, this.self_attn.forward(this.input_layernorm.forward(x), ctx));
      return h.add(this.mlp.forward(normed));
    });
  }
}

/** The decoder stack without the head (HF's LlamaModel, the `model.` prefix). */
export class LlamaModel extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<LlamaDecoderLayer>;
  norm: RMSNorm;
  readonly config: LlamaConfig;
  readonly #invFreq: Float32Array;

  constructor(cfg: LlamaConfig, opts: ParamOptions) {
    super();
    this.config = cfg;
    this.embed_tokens = this.registerModule("embed_tokens", new Embedding(cfg.vocab_size, cfg.hidden_size, opts));
    const layers = Array.from({ length: cfg.num_hidden_layers }, (_, i) => new LlamaDecoderLayer(cfg, opts, i));
    this.layers = this.registerModule("layers", new ModuleList(layers));
    this.norm = this.registerModule("norm", new RMSNorm(cfg.hidden_size, { ...opts, eps: cfg.rms_norm_eps }));
    this.#invFreq = ropeInvFreq(cfg);
  }

  /**
   * cos/sin tables covering `positions`, grown by doubling (a 128k-context table up front would be
   * large). Dynamic NTK scaling past max_position_embeddings rebuilds them for exactly this length
   * on every call, as transformers' dynamic_rope_update does for the longest sequence it has seen
   * (the same thing for one forward, and for generation, whose length only grows).
   */
  ropeTables(positions: number): RopeTables {
    const max = this.config.max_position_embeddings;
    const dynamic = this.config.rope_scaling?.rope_type === "dynamic";
    if (positions > max) {
      if (!dynamic) throw new RangeError(`positions up to ${positions} exceed max_position_embeddings (${max})`);
      const inv = ropeInvFreq(this.config, positions);
      return noGrad(() => ropeTables(this.config.head_dim, positions, this.config.rope_theta, inv, { backend: this.embed_tokens.weight.backend }));
    }
    const cos = this.getBuffer("rope_cos");
    if (cos && cos.shape[0] >= positions) return { cos, sin: this.getBuffer("rope_sin") as Tensor };
    const n = Math.min(max, Math.max(256, 2 ** Math.ceil(Math.log2(positions))));
    const t = noGrad(() => ropeTables(this.config.head_dim, n, this.config.rope_theta, this.#invFreq, { backend: this.embed_tokens.weight.backend }));
    this.registerBuffer("rope_cos", t.cos, { persistent: false });
    this.registerBuffer("rope_sin", t.sin, { persistent: false });
    return t;
  }

  /** ids (B, T) i32 -> hidden states (B, T, C) after the final norm. */
  forward(ids: Tensor, opts: { cache?: KVCache; positionOffset?: number } = {}): Tensor {
    return scope(() => {
      if (ids.rank !== 2 || ids.dtype !== "i32") throw new TypeError(`forward: ids must be i32 [B, T], got ${ids.describe()}`);
      const T = ids.shape[1];
      const positionOffset = opts.positionOffset ?? opts.cache?.length ?? 0;
      const rope = this.ropeTables(positionOffset + T);
      let h = this.embed_tokens.forward(ids); // (B, T, C)
      let i = 0;
      for (const layer of this.layers) h = layer.forward(h, { rope, positionOffset, cache: opts.cache, layer: i++ });
      opts.cache?.advance(T);
      return this.norm.forward(h);
    });
  }

  /**
   * One step of several sequences at once (continuous batching): segment i is `ids[i]`, the new
   * tokens of the sequence cached in caches[i] (its prompt when the cache is empty, else its next
   * token), at positions caches[i].length onwards. Projections and MLP see all tokens as one
   * (1, L, C) batch; each segment attends causally over its own cache. Returns the hidden state of
   * each segment's last token (1, N, C) after the final norm; every cache advances by its segment.
   */
  forwardSegments(ids: readonly (readonly number[])[], caches: readonly KVCache[]): Tensor {
    return scope(() => {
      if (ids.length === 0 || ids.length !== caches.length) throw new RangeError(`forwardSegments: ${ids.length} segments for ${caches.length} caches`);
      if (ids.some((s) => s.length === 0)) throw new RangeError("forwardSegments: a segment has no ids");
      const backend = this.embed_tokens.weight.backend;
      const lengths = ids.map((s) => s.length);
      const positions = caches.flatMap((c, i) => Array.from({ length: lengths[i] }, (_, t) => c.length + t));
      const tables = this.ropeTables(Math.max(...positions) + 1);
      const at = tensor(Int32Array.from(positions), { shape: [positions.length], dtype: "i32", backend });
      const rope = { cos: embedding(tables.cos, at), sin: embedding(tables.sin, at) }; // (L, hs/2): row t at token t's position
      let h = this.embed_tokens.forward(tensor(Int32Array.from(ids.flat()), { shape: [1, positions.length], dtype: "i32", backend })); // (1, L, C)
      let i = 0;
      const segments = { caches, lengths };
      for (const layer of this.layers) h = layer.forward(h, { rope, positionOffset: 0, segments, layer: i++ });
      caches.forEach((c, k) => c.advance(lengths[k]));
      if (positions.length > ids.length) {
        // Only the last token of each segment goes on (to the head): its row in (1, L, C).
        let end = -1;
        const last = tensor(Int32Array.from(lengths.map((n) => (end += n))), { shape: [ids.length], dtype: "i32", backend });
        h = embedding(h.reshape([positions.length, h.shape[2]]), last).reshape([1, ids.length, h.shape[2]]);
      }
      return this.norm.forward(h);
    });
  }
}

export interface LlamaForwardOptions {
  /** Append this call's keys/values to the cache and attend over everything cached. */
  cache?: KVCache;
  /** Position of the first id (default: the cache length, else 0). */
  positionOffset?: number;
  /** Only compute logits for the last position (B, 1, V): what a generation step needs. */
  lastOnly?: boolean;
}

export interface LlamaOptions extends ParamOptions {}

/** Llama-family causal LM: `model` (the stack) + `lm_head` (tied to the embeddings when the config says so). */
export class LlamaForCausalLM extends Module {
  model: LlamaModel;
  lm_head: TensorModule;
  readonly config: LlamaConfig;

  constructor(cfg: LlamaConfig, opts: LlamaOptions = {}) {
    super();
    this.config = cfg;
    this.model = this.registerModule("model", new LlamaModel(cfg, opts));
    const weight = cfg.tie_word_embeddings ? this.model.embed_tokens.weight : undefined;
    this.lm_head = this.registerModule("lm_head", new Linear(cfg.hidden_size, cfg.vocab_size, { ...opts, weight }));
    this.nameParameters();
  }

  /** ids (B, T) i32 -> logits (B, T, V) (or (B, 1, V) with `lastOnly`). */
  forward(ids: Tensor, opts: LlamaForwardOptions = {}): Tensor {
    return scope(() => {
      let h = this.model.forward(ids, opts); // (B, T, C)
      if (opts.lastOnly) h = h.narrow(1, h.shape[1] - 1, 1); // (B, 1, C)
      return this.lm_head.forward(h);
    });
  }

  /**
   * Summed next-token loss of ids (B, T) against labels (B, T) (ignoreIndex skipped), what
   * training differentiates. A plain f32 head goes through linearCrossEntropy, which never holds
   * the (B·T, V) logits of a real vocabulary; any other head (LoRA-wrapped, half precision) takes
   * forward() and crossEntropy in f32.
   */
  lossSum(ids: Tensor, labels: Tensor, ignoreIndex: number): Tensor {
    return scope(() => {
      const head = this.lm_head;
      if (head instanceof Linear && head.weight.dtype === "f32") {
        return linearCrossEntropy(this.model.forward(ids), head.weight, labels, { bias: head.bias, ignoreIndex, reduction: "sum" });
      }
      const logits = this.forward(ids);
      return crossEntropy(logits.dtype === "f32" ? logits : logits.cast("f32"), labels, { ignoreIndex, reduction: "sum" });
    });
  }

  /** Next-token logits (1, N, V) of N sequences stepped together, each with its own cache (LlamaModel.forwardSegments). */
  stepSegments(ids: readonly (readonly number[])[], caches: readonly KVCache[]): Tensor {
    return scope(() => this.lm_head.forward(this.model.forwardSegments(ids, caches)));
  }

  /** A fresh cache for this model's layers; `capacity`: the positions it will hold (prompt + new tokens), if known. */
  createCache(opts: KVCacheOptions = {}): KVCache {
    return new KVCache(this.config.num_hidden_layers, { capacity: Math.min(opts.capacity ?? 32, this.config.max_position_embeddings) });
  }

  get dtype(): Tensor["dtype"] {
    return this.model.embed_tokens.weight.dtype;
  }

  get backend(): Tensor["backend"] {
    return this.model.embed_tokens.weight.backend;
  }
}
