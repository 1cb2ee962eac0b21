/**
 * The Llama-family config (Llama 1-3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM): HF config.json
 * validated into one shape with transformers' defaults filled in, RoPE inverse frequencies per
 * `rope_scaling` type, and the way back to a config.json for saving. Field names are HF's.
 */

export type RopeScaling =
  | { rope_type: "llama3"; factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number }
  | { rope_type: "linear"; factor: number }
  | { rope_type: "dynamic"; factor: number };

export type LayerType = "full_attention" | "sliding_attention";

export type ModelType = "llama" | "mistral" | "qwen2" | "qwen3";

/** A validated Llama-family config: HF's field names, defaults filled in. */
export interface LlamaConfig {
  model_type: ModelType;
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
  /** Biases on q/k/v (Qwen2; Llama's and Qwen3's attention_bias). */
  qkv_bias: boolean;
  /** Bias on o_proj (Llama's and Qwen3's attention_bias; Qwen2 has none). */
  o_proj_bias: boolean;
  mlp_bias: boolean;
  /** Qwen3: RMSNorm over each head's q and k (self_attn.q_norm / k_norm) before RoPE. */
  qk_norm: boolean;
  /** Keys a query sees in a "sliding_attention" layer, itself included; null when no layer slides. */
  sliding_window: number | null;
  /** Per layer: full causal attention or the sliding window (transformers' layer_types). */
  layer_types: LayerType[];
  bos_token_id: number | null;
  /** Stop tokens; Llama 3 lists several. */
  eos_token_id: number[];
}

export const SUPPORTED_TYPES: readonly ModelType[] = ["llama", "mistral", "qwen2", "qwen3"];

/** Defaults that differ by model type (transformers' configuration_*.py). */
const DEFAULTS: Record<ModelType, { max_position_embeddings: number; rms_norm_eps: number; rope_theta: number }> = {
  llama: { max_position_embeddings: 2048, rms_norm_eps: 1e-6, rope_theta: 10000 },
  mistral: { max_position_embeddings: 4096 * 32, rms_norm_eps: 1e-6, rope_theta: 10000 },
  qwen2: { max_position_embeddings: 32768, rms_norm_eps: 1e-6, rope_theta: 10000 },
  qwen3: { max_position_embeddings: 32768, rms_norm_eps: 1e-6, rope_theta: 10000 },
};

/**
 * Validate an HF config.json object. Anything this implementation would silently get wrong
 * (another architecture, an unknown RoPE scaling, another activation, pre-quantized weights)
 * is an error naming the file, the field, its value and what was expected.
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
  const type = modelType as ModelType;
  const d = DEFAULTS[type];

  const act = c.hidden_act ?? c.hidden_activation ?? "silu";
  if (act !== "silu") throw bad(c.hidden_act !== undefined ? "hidden_act" : "hidden_activation", 'is not supported (only "silu": SwiGLU MLP)');
  if (c.quantization_config != null) {
    throw new Error(
      `${file}: quantization_config is present (${JSON.stringify(
        (c.quantization_config as Record<string, unknown>).quant_method ?? "unknown method",
      )}): pre-quantized checkpoints are not supported; load the float weights`,
    );
  }
  if (c.partial_rotary_factor !== undefined && c.partial_rotary_factor !== 1)
    throw bad("partial_rotary_factor", "is not supported (RoPE on the whole head only)");

  const hidden = int("hidden_size");
  const heads = int("num_attention_heads");
  const kvHeads = int("num_key_value_heads", heads);
  const layers = int("num_hidden_layers");
  if (heads % kvHeads !== 0) throw bad("num_key_value_heads", `must divide num_attention_heads (${heads})`);
  if (c.head_dim == null && hidden % heads !== 0) throw bad("hidden_size", `is not a multiple of num_attention_heads (${heads}) and head_dim is not given`);
  const headDim = c.head_dim == null ? hidden / heads : int("head_dim");
  if (headDim % 2 !== 0) throw bad(c.head_dim == null ? "hidden_size" : "head_dim", "gives an odd head size; RoPE needs pairs");
  const maxPos = int("max_position_embeddings", d.max_position_embeddings);

  // transformers v5 moves rope_theta and rope_scaling into rope_parameters.
  const ropeParams = (c.rope_parameters ?? null) as Record<string, unknown> | null;
  const theta = real("rope_theta", (ropeParams?.rope_theta as number | undefined) ?? d.rope_theta);
  const scaling = parseRopeScaling(
    (c.rope_scaling ?? ropeParams ?? null) as Record<string, unknown> | null,
    c.rope_scaling != null ? "rope_scaling" : "rope_parameters",
    file,
  );

  const { window, layerTypes } = parseSlidingWindow(c, type, layers, file, bad);

  const eos = c.eos_token_id;
  const eosList = eos == null ? [] : Array.isArray(eos) ? eos : [eos];
  if (!eosList.every((e) => Number.isSafeInteger(e))) throw bad("eos_token_id", "must be an integer or a list of integers");
  const bos = c.bos_token_id;
  if (bos != null && !Number.isSafeInteger(bos)) throw bad("bos_token_id", "must be an integer");
  if (c.attention_bias != null && typeof c.attention_bias !== "boolean") throw bad("attention_bias", "must be true or false");
  // Qwen2 always has q/k/v biases and never an o_proj bias; MistralAttention has no biases at all.
  const attnBias = type !== "mistral" && c.attention_bias === true;

  return {
    model_type: type,
    vocab_size: int("vocab_size"),
    hidden_size: hidden,
    intermediate_size: int("intermediate_size"),
    num_hidden_layers: layers,
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
    mlp_bias: type !== "qwen2" && type !== "qwen3" && type !== "mistral" && c.mlp_bias === true,
    qk_norm: type === "qwen3",
    sliding_window: window,
    layer_types: layerTypes,
    bos_token_id: (bos as number | null | undefined) ?? null,
    eos_token_id: eosList as number[],
  };
}

/**
 * Which layers slide, as transformers decides it. Mistral: every layer when sliding_window is a
 * number (4096 when the key is absent, MistralConfig's default), none when it is null. Qwen2/Qwen3:
 * only with use_sliding_window, and then layers i >= max_window_layers. An explicit layer_types
 * list (transformers >= 4.53 writes one) wins. A window that is never shorter than the context is
 * kept: it costs nothing, since the windowed path runs only when a query has more keys than it.
 */
function parseSlidingWindow(
  c: Record<string, unknown>,
  type: ModelType,
  layers: number,
  file: string,
  bad: (field: string, why: string) => Error,
): { window: number | null; layerTypes: LayerType[] } {
  const positiveInt = (field: string): number => {
    const v = c[field];
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw bad(field, "must be a positive integer or null");
    return v as number;
  };
  let window: number | null = null;
  let sliding = (_i: number) => false;
  if (type === "mistral") {
    window = c.sliding_window === undefined ? 4096 : c.sliding_window === null ? null : positiveInt("sliding_window");
    sliding = () => window !== null;
  } else if (type === "qwen2" || type === "qwen3") {
    if (c.use_sliding_window != null && typeof c.use_sliding_window !== "boolean") throw bad("use_sliding_window", "must be true or false");
    if (c.use_sliding_window === true) {
      window = c.sliding_window === undefined ? 4096 : c.sliding_window === null ? null : positiveInt("sliding_window");
      const from =
        c.max_window_layers == null
          ? 28
          : Number.isSafeInteger(c.max_window_layers) && (c.max_window_layers as number) >= 0
          ? (c.max_window_layers as number)
          : (() => {
              throw bad("max_window_layers", "must be a non-negative integer");
            })();
      sliding = (i) => window !== null && i >= from;
    }
  } // Llama: transformers ignores a sliding_window key (LlamaAttention has no window), and so does this.
  let layerTypes = Array.from({ length: layers }, (_, i): LayerType => (sliding(i) ? "sliding_attention" : "full_attention"));
  if (c.layer_types != null) {
    const lt = c.layer_types;
    if (!Array.isArray(lt) || lt.length !== layers || !lt.every((t) => t === "full_attention" || t === "sliding_attention")) {
      throw bad("layer_types", `must list "full_attention" or "sliding_attention" for each of the ${layers} layers`);
    }
    layerTypes = lt as LayerType[];
    if (layerTypes.includes("sliding_attention")) {
      if (type === "llama") throw bad("layer_types", 'names "sliding_attention" but transformers\' Llama has no sliding window');
      if (c.sliding_window == null) throw bad("sliding_window", 'must be a positive integer when layer_types names "sliding_attention"');
      window = positiveInt("sliding_window");
    }
  }
  if (!layerTypes.includes("sliding_attention")) window = null;
  return { window, layerTypes };
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
  if (type === "dynamic") {
    // transformers' dynamic NTK reads max_position_embeddings, not original_max_position_embeddings.
    if (num("factor") < 1) throw new Error(`${file}: ${field}.factor = ${JSON.stringify(s.factor)} must be at least 1 for dynamic NTK scaling`);
    return { rope_type: "dynamic", factor: num("factor") };
  }
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
  throw new Error(`${file}: ${field}.${key} = ${JSON.stringify(type)} is not supported (supported: default, linear, dynamic, llama3)`);
}

/**
 * RoPE inverse frequencies, as transformers' rope init functions compute them: theta^(-2i/hs);
 * "linear" divides them by `factor`; "llama3" (_compute_llama3_parameters) divides
 * long wavelengths by `factor`, keeps short ones, and blends smoothly in between; "dynamic"
 * (_compute_dynamic_ntk_parameters) raises the base once the sequence `seqLen` outgrows
 * max_position_embeddings, and is the plain schedule below it.
 */
export function ropeInvFreq(
  cfg: Pick<LlamaConfig, "head_dim" | "rope_theta" | "rope_scaling"> & { max_position_embeddings?: number },
  seqLen = 0,
): Float32Array {
  const hs = cfg.head_dim;
  const s = cfg.rope_scaling;
  let base = cfg.rope_theta;
  if (s?.rope_type === "dynamic") {
    const maxPos = cfg.max_position_embeddings ?? Infinity;
    if (seqLen > maxPos) base *= ((s.factor * seqLen) / maxPos - (s.factor - 1)) ** (hs / (hs - 2));
  }
  const inv = Float32Array.from({ length: hs / 2 }, (_, i) => 1 / base ** ((2 * i) / hs));
  if (!s || s.rope_type === "dynamic") return inv;
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

const ARCHITECTURES: Record<ModelType, string> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
  qwen3: "Qwen3ForCausalLM",
};

/** The config.json object for a config (what a save next to model.safetensors needs); parseLlamaConfig reads it back equal. */
export function llamaConfigToHf(cfg: LlamaConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: [ARCHITECTURES[cfg.model_type]],
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
  };
  if (cfg.model_type === "llama") out.mlp_bias = cfg.mlp_bias;
  if (cfg.model_type === "llama" || cfg.model_type === "qwen3") out.attention_bias = cfg.qkv_bias;
  const slides = cfg.layer_types.includes("sliding_attention");
  out.sliding_window = cfg.model_type === "llama" ? undefined : cfg.sliding_window;
  if (cfg.model_type === "qwen2" || cfg.model_type === "qwen3") {
    out.use_sliding_window = slides;
    const first = cfg.layer_types.indexOf("sliding_attention");
    out.max_window_layers = first < 0 ? cfg.num_hidden_layers : first;
  }
  if (slides) out.layer_types = cfg.layer_types;
  if (out.sliding_window === undefined) delete out.sliding_window;
  return out;
}
