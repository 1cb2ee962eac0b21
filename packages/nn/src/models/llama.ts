/**
 * The Llama family (Llama 1/2/3, Mistral, Qwen2, SmolLM) as one readable file, built from a
 * Hugging Face config.json. Module names are exactly HF's (model.layers.N.self_attn.q_proj, ...)
 * so safetensors checkpoints and PEFT adapter keys map one to one.
 *
 * Shapes: B batch, T new positions, S cached + new positions, C hidden, nh query heads,
 * nkv key/value heads, hs head size, V vocab.
 */
import { type RopeTables, type Tensor, attention, crossEntropy, linearCrossEntropy, noGrad, rope, ropeTables, scope, swiglu } from "@lowrank/tensor";
import { KVCache } from "../kv-cache.ts";
import { Embedding, Linear, RMSNorm } from "../layers.ts";
import { Module, ModuleList, type ParamOptions, type TensorModule } from "../module.ts";

// ---------------------------------------------------------------- config

export type RopeScaling =
  | { rope_type: "llama3"; factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number }
  | { rope_type: "linear"; factor: number };

/** A validated Llama-family config: HF's field names, defaults filled in. */
export interface LlamaConfig {
  model_type: "llama" | "mistral" | "qwen2";
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  max_position_embeddings: number;
  rms_norm_eps: number;
  rope_theta: number;
  rope_scaling: RopeScaling | null;
  tie_word_embeddings: boolean;
  /** Biases on q/k/v (Qwen2; Llama's attention_bias). */
  qkv_bias: boolean;
  /** Bias on o_proj (Llama's attention_bias only; Qwen2 has none). */
  o_proj_bias: boolean;
  mlp_bias: boolean;
  bos_token_id: number | null;
  /** Stop tokens; Llama 3 lists several. */
  eos_token_id: number[];
}

const SUPPORTED_TYPES = ["llama", "mistral", "qwen2"] as const;

/** Defaults that differ by model type (transformers' configuration_*.py). */
const DEFAULTS: Record<LlamaConfig["model_type"], { max_position_embeddings: number; rms_norm_eps: number; rope_theta: number }> = {
  llama: { max_position_embeddings: 2048, rms_norm_eps: 1e-6, rope_theta: 10000 },
  mistral: { max_position_embeddings: 4096 * 32, rms_norm_eps: 1e-6, rope_theta: 10000 },
  qwen2: { max_position_embeddings: 32768, rms_norm_eps: 1e-6, rope_theta: 10000 },
};

/**
 * Validate an HF config.json object. Anything this implementation would silently get wrong
 * (another architecture, sliding-window attention, an unknown RoPE scaling, another activation,
 * pre-quantized weights) is an error naming the file, the field and its value.
 */
export function parseLlamaConfig(json: unknown, file = "config.json"): LlamaConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new Error(`${file}: expected a JSON object`);
  const c = json as Record<string, unknown>;
  const bad = (field: string, why: string): Error => new Error(`${file}: ${field} = ${JSON.stringify(c[field] ?? nested(c, field))} ${why}`);
  const int = (field: string, dflt?: number): number => {
    const v = c[field] ?? dflt;
    if (v === undefined) throw new Error(`${file}: required field "${field}" is missing`);
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw bad(field, "must be a positive integer");
    return v as number;
  };
  const real = (field: string, dflt: number, src: Record<string, unknown> = c): number => {
    const v = src[field] ?? dflt;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw bad(field, "must be a positive number");
    return v;
  };

  const modelType = c.model_type;
  if (modelType === undefined) throw new Error(`${file}: required field "model_type" is missing`);
  if (!SUPPORTED_TYPES.includes(modelType as never)) {
    throw bad("model_type", `is not supported: this implementation covers the Llama family (${SUPPORTED_TYPES.join(", ")})`);
  }
  const type = modelType as LlamaConfig["model_type"];
  const d = DEFAULTS[type];

  const act = c.hidden_act ?? c.hidden_activation ?? "silu";
  if (act !== "silu") throw bad(c.hidden_act !== undefined ? "hidden_act" : "hidden_activation", 'is not supported (only "silu": SwiGLU MLP)');
  if (c.quantization_config != null) {
    throw new Error(`${file}: quantization_config is present (${JSON.stringify((c.quantization_config as Record<string, unknown>).quant_method ?? "unknown method")}): pre-quantized checkpoints are not supported; load the float weights`);
  }
  if (c.partial_rotary_factor !== undefined && c.partial_rotary_factor !== 1) throw bad("partial_rotary_factor", "is not supported (RoPE on the whole head only)");
  if (type === "qwen2" && c.use_sliding_window === true) throw bad("use_sliding_window", "is not supported (sliding-window attention)");

  const hidden = int("hidden_size");
  const heads = int("num_attention_heads");
  const kvHeads = int("num_key_value_heads", heads);
  if (heads % kvHeads !== 0) throw bad("num_key_value_heads", `must divide num_attention_heads (${heads})`);
  if (c.head_dim == null && hidden % heads !== 0) throw bad("hidden_size", `is not a multiple of num_attention_heads (${heads}) and head_dim is not given`);
  const headDim = c.head_dim == null ? hidden / heads : int("head_dim");
  if (headDim % 2 !== 0) throw bad(c.head_dim == null ? "hidden_size" : "head_dim", "gives an odd head size; RoPE needs pairs");
  const maxPos = int("max_position_embeddings", d.max_position_embeddings);

  if (type === "mistral" && c.sliding_window != null) {
    if (typeof c.sliding_window !== "number" || c.sliding_window < maxPos) {
      throw bad("sliding_window", `is not supported: sliding-window attention would apply below max_position_embeddings (${maxPos})`);
    }
  }

  // transformers v5 moves rope_theta and rope_scaling into rope_parameters.
  const ropeParams = (c.rope_parameters ?? null) as Record<string, unknown> | null;
  const theta = real("rope_theta", (ropeParams?.rope_theta as number | undefined) ?? d.rope_theta);
  const scaling = parseRopeScaling((c.rope_scaling ?? ropeParams ?? null) as Record<string, unknown> | null, c.rope_scaling != null ? "rope_scaling" : "rope_parameters", file);

  const eos = c.eos_token_id;
  const eosList = eos == null ? [] : Array.isArray(eos) ? eos : [eos];
  if (!eosList.every((e) => Number.isSafeInteger(e))) throw bad("eos_token_id", "must be an integer or a list of integers");
  const bos = c.bos_token_id;
  if (bos != null && !Number.isSafeInteger(bos)) throw bad("bos_token_id", "must be an integer");
  const attnBias = c.attention_bias === true;

  return {
    model_type: type,
    vocab_size: int("vocab_size"),
    hidden_size: hidden,
    intermediate_size: int("intermediate_size"),
    num_hidden_layers: int("num_hidden_layers"),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    max_position_embeddings: maxPos,
    rms_norm_eps: real("rms_norm_eps", d.rms_norm_eps),
    rope_theta: theta,
    rope_scaling: scaling,
    tie_word_embeddings: c.tie_word_embeddings === true,
    qkv_bias: type === "qwen2" || attnBias,
    o_proj_bias: type !== "qwen2" && attnBias,
    mlp_bias: c.mlp_bias === true,
    bos_token_id: (bos as number | null | undefined) ?? null,
    eos_token_id: eosList as number[],
  };
}

function nested(c: Record<string, unknown>, path: string): unknown {
  return path.split(".").reduce<unknown>((o, k) => (o && typeof o === "object" ? (o as Record<string, unknown>)[k] : undefined), c);
}

function parseRopeScaling(s: Record<string, unknown> | null, field: string, file: string): RopeScaling | null {
  if (s === null) return null;
  const type = s.rope_type ?? s.type ?? "default";
  const key = s.rope_type !== undefined ? "rope_type" : "type";
  const num = (k: string): number => {
    const v = s[k];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new Error(`${file}: ${field}.${k} = ${JSON.stringify(v)} must be a positive number`);
    return v;
  };
  if (type === "default") return null;
  if (type === "linear") return { rope_type: "linear", factor: num("factor") };
  if (type === "llama3") {
    const r = {
      rope_type: "llama3" as const,
      factor: num("factor"),
      low_freq_factor: num("low_freq_factor"),
      high_freq_factor: num("high_freq_factor"),
      original_max_position_embeddings: num("original_max_position_embeddings"),
    };
    if (r.high_freq_factor <= r.low_freq_factor) throw new Error(`${file}: ${field}.high_freq_factor must exceed low_freq_factor`);
    return r;
  }
  throw new Error(`${file}: ${field}.${key} = ${JSON.stringify(type)} is not supported (supported: default, linear, llama3)`);
}

/**
 * RoPE inverse frequencies, as transformers' rope init functions compute them: theta^(-2i/hs);
 * "linear" divides them by `factor`; "llama3" (_compute_llama3_parameters) divides
 * long wavelengths by `factor`, keeps short ones, and blends smoothly in between.
 */
export function ropeInvFreq(cfg: Pick<LlamaConfig, "head_dim" | "rope_theta" | "rope_scaling">): Float32Array {
  const hs = cfg.head_dim;
  const inv = Float32Array.from({ length: hs / 2 }, (_, i) => 1 / cfg.rope_theta ** ((2 * i) / hs));
  const s = cfg.rope_scaling;
  if (!s) return inv;
  if (s.rope_type === "linear") return inv.map((f) => f / s.factor);
  const lowFreqWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highFreqWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / s.factor;
    const smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
}

/** The config.json object for a config (what a save next to model.safetensors needs). */
export function llamaConfigToHf(cfg: LlamaConfig): Record<string, unknown> {
  const arch = { llama: "LlamaForCausalLM", mistral: "MistralForCausalLM", qwen2: "Qwen2ForCausalLM" }[cfg.model_type];
  const out: Record<string, unknown> = {
    architectures: [arch],
    model_type: cfg.model_type,
    vocab_size: cfg.vocab_size,
    hidden_size: cfg.hidden_size,
    intermediate_size: cfg.intermediate_size,
    num_hidden_layers: cfg.num_hidden_layers,
    num_attention_heads: cfg.num_attention_heads,
    num_key_value_heads: cfg.num_key_value_heads,
    head_dim: cfg.head_dim,
    max_position_embeddings: cfg.max_position_embeddings,
    rms_norm_eps: cfg.rms_norm_eps,
    rope_theta: cfg.rope_theta,
    rope_scaling: cfg.rope_scaling,
    hidden_act: "silu",
    tie_word_embeddings: cfg.tie_word_embeddings,
    bos_token_id: cfg.bos_token_id,
    eos_token_id: cfg.eos_token_id.length === 1 ? cfg.eos_token_id[0] : cfg.eos_token_id,
    mlp_bias: cfg.mlp_bias,
  };
  if (cfg.model_type !== "qwen2") out.attention_bias = cfg.qkv_bias;
  if (cfg.model_type === "mistral") out.sliding_window = null;
  return out;
}

// ---------------------------------------------------------------- modules

/** What a layer needs besides its input: rotary tables, the first position, and the cache slot. */
export interface LayerContext {
  rope: RopeTables;
  positionOffset: number;
  cache?: KVCache;
  layer: number;
}

export class LlamaAttention extends Module {
  q_proj: TensorModule;
  k_proj: TensorModule;
  v_proj: TensorModule;
  o_proj: TensorModule;
  readonly nh: number;
  readonly nkv: number;
  readonly hs: number;

  constructor(cfg: LlamaConfig, opts: ParamOptions) {
    super();
    this.nh = cfg.num_attention_heads;
    this.nkv = cfg.num_key_value_heads;
    this.hs = cfg.head_dim;
    const C = cfg.hidden_size;
    this.q_proj = this.registerModule("q_proj", new Linear(C, this.nh * this.hs, { ...opts, bias: cfg.qkv_bias }));
    this.k_proj = this.registerModule("k_proj", new Linear(C, this.nkv * this.hs, { ...opts, bias: cfg.qkv_bias }));
    this.v_proj = this.registerModule("v_proj", new Linear(C, this.nkv * this.hs, { ...opts, bias: cfg.qkv_bias }));
    this.o_proj = this.registerModule("o_proj", new Linear(this.nh * this.hs, C, { ...opts, bias: cfg.o_proj_bias }));
  }

  /** x (B, T, C) -> (B, T, C) */
  forward(x: Tensor, ctx: LayerContext): Tensor {
    return scope(() => {
      const [B, T] = x.shape;
      const heads = (t: Tensor, n: number) => t.reshape([B, T, n, this.hs]).permute([0, 2, 1, 3]); // (B, n, T, hs)
      const q = rope(heads(this.q_proj.forward(x), this.nh), ctx.rope, ctx.positionOffset); // (B, nh, T, hs)
      let k = rope(heads(this.k_proj.forward(x), this.nkv), ctx.rope, ctx.positionOffset); // (B, nkv, T, hs)
      let v = heads(this.v_proj.forward(x), this.nkv); // (B, nkv, T, hs)
      if (ctx.cache) [k, v] = ctx.cache.update(ctx.layer, k, v); // (B, nkv, S, hs)
      const y = attention(q, k, v); // (B, nh, T, hs); queries are the last T of S positions
      return this.o_proj.forward(y.permute([0, 2, 1, 3]).reshape([B, T, this.nh * this.hs]));
    });
  }
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

  constructor(cfg: LlamaConfig, opts: ParamOptions) {
    super();
    const normOpts = { ...opts, eps: cfg.rms_norm_eps };
    this.input_layernorm = this.registerModule("input_layernorm", new RMSNorm(cfg.hidden_size, normOpts));
    this.self_attn = this.registerModule("self_attn", new LlamaAttention(cfg, opts));
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
    const layers = Array.from({ length: cfg.num_hidden_layers }, () => new LlamaDecoderLayer(cfg, opts));
    this.layers = this.registerModule("layers", new ModuleList(layers));
    this.norm = this.registerModule("norm", new RMSNorm(cfg.hidden_size, { ...opts, eps: cfg.rms_norm_eps }));
    this.#invFreq = ropeInvFreq(cfg);
  }

  /** cos/sin tables covering `positions`, grown by doubling (a 128k-context table up front would be large). */
  ropeTables(positions: number): RopeTables {
    const max = this.config.max_position_embeddings;
    if (positions > max) throw new RangeError(`positions up to ${positions} exceed max_position_embeddings (${max})`);
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

  /** A fresh cache sized for this model. */
  createCache(): KVCache {
    return new KVCache(this.config.num_hidden_layers);
  }

  get dtype(): Tensor["dtype"] {
    return this.model.embed_tokens.weight.dtype;
  }

  get backend(): Tensor["backend"] {
    return this.model.embed_tokens.weight.backend;
  }
}
