/**
 * `LoraConfig` with PEFT's field names, defaults and meaning (peft/tuners/lora/config.py), plus
 * the JSON form of adapter_config.json. Validation here is about the config alone; checks
 * against a model (targets that match nothing, r too large for a layer) live in targets.ts.
 */

export type LoraBias = "none" | "all" | "lora_only";

/** A resolved config: every field present, PEFT's names. */
export interface LoraConfig {
  peft_type: "LORA";
  /** "CAUSAL_LM" for decoder-only LMs; saved as is. */
  task_type: string | null;
  base_model_name_or_path: string | null;
  revision: string | null;
  /** Rank (default 8). */
  r: number;
  /** scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora (default 8). */
  lora_alpha: number;
  /** Dropout on the adapter input (default 0). */
  lora_dropout: number;
  /** List of name suffixes, a full-match regex, "all-linear", or null (the architecture's default). */
  target_modules: string[] | string | null;
  exclude_modules: string[] | string | null;
  /** Which existing biases train (and are saved): none, all, or those of LoRA-wrapped layers. */
  bias: LoraBias;
  use_rslora: boolean;
  /** true: kaiming-uniform A, zero B; "gaussian": A ~ N(0, (1/r)²), zero B; false: random A and B. */
  init_lora_weights: boolean | "gaussian";
  /** Extra modules trained in full and saved (a head, the embeddings). */
  modules_to_save: string[] | null;
  /** Per-module r, keyed by a suffix or regex matched as PEFT does: /(.*\.)?(key)$/. */
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  /** True for Conv1D-style [in, out] weights; PEFT resets it to false for nn.Linear targets. */
  fan_in_fan_out: boolean;
  layers_to_transform: number[] | number | null;
  layers_pattern: string[] | string | null;
  /** DoRA (magnitude/direction) on Linear targets. */
  use_dora: boolean;
  inference_mode: boolean;
}

/** What a user passes: any subset of the fields. */
export type LoraConfigInput = Partial<Omit<LoraConfig, "peft_type">> & { peft_type?: "LORA" };

export const INCLUDE_LINEAR_LAYERS_SHORTHAND = "all-linear";

/** PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the architectures nn builds. */
export const DEFAULT_TARGET_MODULES: Readonly<Record<string, readonly string[]>> = {
  llama: ["q_proj", "v_proj"],
  mistral: ["q_proj", "v_proj"],
  qwen2: ["q_proj", "v_proj"],
  qwen3: ["q_proj", "v_proj"],
};

/** The PEFT version whose adapter format we write and test against. */
export const PEFT_FORMAT_VERSION = "0.18.1";

export class LoraConfigError extends Error {
  override name = "LoraConfigError";
}

const DEFAULTS: LoraConfig = {
  peft_type: "LORA",
  task_type: null,
  base_model_name_or_path: null,
  revision: null,
  r: 8,
  lora_alpha: 8,
  lora_dropout: 0,
  target_modules: null,
  exclude_modules: null,
  bias: "none",
  use_rslora: false,
  init_lora_weights: true,
  modules_to_save: null,
  rank_pattern: {},
  alpha_pattern: {},
  fan_in_fan_out: false,
  layers_to_transform: null,
  layers_pattern: null,
  use_dora: false,
  inference_mode: false,
};

/** Fill PEFT's defaults and validate types and ranges; every problem is reported at once. */
export function loraConfig(input: LoraConfigInput = {}, source = "LoraConfig"): LoraConfig {
  const c: LoraConfig = { ...DEFAULTS, ...stripUndefined(input) } as LoraConfig;
  c.rank_pattern = { ...(c.rank_pattern ?? {}) };
  c.alpha_pattern = { ...(c.alpha_pattern ?? {}) };
  const errors: string[] = [];
  const bad = (field: string, why: string) => errors.push(`${field} = ${show((c as unknown as Record<string, unknown>)[field])} ${why}`);

  if (c.peft_type !== "LORA") bad("peft_type", 'is not supported (only "LORA")');
  if (!isPosInt(c.r)) bad("r", "must be a positive integer (r <= 0 gives no adapter)");
  if (typeof c.lora_alpha !== "number" || !Number.isFinite(c.lora_alpha)) bad("lora_alpha", "must be a finite number");
  if (typeof c.lora_dropout !== "number" || !(c.lora_dropout >= 0 && c.lora_dropout < 1)) bad("lora_dropout", "must be in [0, 1)");
  if (!["none", "all", "lora_only"].includes(c.bias as string)) bad("bias", 'must be "none", "all" or "lora_only"');
  for (const f of ["use_rslora", "use_dora", "fan_in_fan_out", "inference_mode"] as const) {
    if (typeof c[f] !== "boolean") bad(f, "must be true or false");
  }
  const init = c.init_lora_weights as unknown;
  if (init !== true && init !== false && init !== "gaussian") {
    const known = ["eva", "olora", "pissa", "corda", "loftq", "orthogonal", "mica"];
    const isKnown = typeof init === "string" && (known.includes(init) || init.startsWith("pissa_niter_"));
    bad(
      "init_lora_weights",
      isKnown ? 'is a PEFT init mode Lowrank does not implement (supported: true, false, "gaussian")' : 'must be true, false or "gaussian"',
    );
  }
  checkNames(c.target_modules, "target_modules", errors, true);
  checkNames(c.exclude_modules, "exclude_modules", errors, true);
  checkNames(c.modules_to_save, "modules_to_save", errors, false);
  checkPattern(c.rank_pattern, "rank_pattern", errors, true);
  checkPattern(c.alpha_pattern, "alpha_pattern", errors, false);
  const ltt = c.layers_to_transform as unknown;
  if (ltt !== null && !(Number.isInteger(ltt) && (ltt as number) >= 0) && !(Array.isArray(ltt) && ltt.every((i) => Number.isInteger(i) && i >= 0))) {
    bad("layers_to_transform", "must be a layer index, a list of indices, or null");
  }
  const lp = c.layers_pattern as unknown;
  if (lp !== null && typeof lp !== "string" && !(Array.isArray(lp) && lp.every((s) => typeof s === "string"))) {
    bad("layers_pattern", "must be a string, a list of strings, or null");
  }
  if (lp !== null && (lp as string | string[]).length > 0 && (ltt === null || (Array.isArray(ltt) && ltt.length === 0))) {
    errors.push("layers_pattern is set but layers_to_transform is not: PEFT uses layers_pattern only to find the indices in layers_to_transform");
  }
  if (typeof c.target_modules === "string" && c.target_modules.toLowerCase() !== INCLUDE_LINEAR_LAYERS_SHORTHAND && c.layers_to_transform !== null) {
    errors.push("layers_to_transform cannot be used when target_modules is a regex string (PEFT rejects it too): put the layer indices in the regex");
  }
  if (c.task_type !== null && typeof c.task_type !== "string") bad("task_type", 'must be a string such as "CAUSAL_LM", or null');
  for (const f of ["base_model_name_or_path", "revision"] as const) {
    if (c[f] !== null && typeof c[f] !== "string") bad(f, "must be a string or null");
  }
  if (errors.length) throw new LoraConfigError(`${source}: invalid config:\n  ${errors.join("\n  ")}`);
  if (Array.isArray(c.target_modules)) c.target_modules = [...c.target_modules];
  if (Array.isArray(c.exclude_modules)) c.exclude_modules = [...c.exclude_modules];
  if (Array.isArray(c.modules_to_save)) c.modules_to_save = [...c.modules_to_save];
  return c;
}

/** scaling for one module: alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT layer.py update_layer). */
export function loraScaling(alpha: number, r: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(r) : alpha / r;
}

/**
 * Keys PEFT writes that Lowrank accepts only at their default: a non-default value changes
 * the math (or the layer type), so silently ignoring it would give a different model.
 */
const MUST_BE_DEFAULT: Record<string, (v: unknown) => boolean> = {
  lora_bias: (v) => v === false || v == null,
  use_qalora: (v) => v === false || v == null,
  layer_replication: (v) => v == null,
  target_parameters: (v) => v == null || (Array.isArray(v) && v.length === 0),
  trainable_token_indices: (v) => v == null,
  alora_invocation_tokens: (v) => v == null,
  use_bdlora: (v) => v == null || v === false,
  arrow_config: (v) => v == null,
  megatron_config: (v) => v == null,
  loftq_config: (v) => v == null || (typeof v === "object" && Object.keys(v as object).length === 0),
  kasa_config: (v) => v == null,
  lora_ga_config: (v) => v == null,
};

/** Keys of adapter_config.json that map onto LoraConfig fields. */
const FIELDS = Object.keys(DEFAULTS) as (keyof LoraConfig)[];

/**
 * Parse an adapter_config.json object. Unknown keys (newer PEFT fields, auto_mapping,
 * peft_version, megatron_core, ...) are ignored, as PEFT readers should; keys whose non-default
 * value would change the model are rejected by name.
 */
export function configFromJson(json: unknown, file = "adapter_config.json"): LoraConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw new LoraConfigError(`${file}: expected a JSON object`);
  const j = json as Record<string, unknown>;
  if (!("peft_type" in j)) throw new LoraConfigError(`${file}: "peft_type" is missing (PEFT requires it to parse a config)`);
  if (j.peft_type !== "LORA") throw new LoraConfigError(`${file}: peft_type = ${show(j.peft_type)} is not supported (only "LORA")`);
  const rejected = Object.entries(MUST_BE_DEFAULT)
    .filter(([k, ok]) => k in j && !ok(j[k]))
    .map(([k]) => `${k} = ${show(j[k])}`);
  if (rejected.length)
    throw new LoraConfigError(`${file}: unsupported PEFT options (Lowrank implements plain LoRA and DoRA on Linear layers): ${rejected.join(", ")}`);
  const input: Record<string, unknown> = {};
  for (const f of FIELDS) if (j[f] !== undefined) input[f] = j[f];
  // PEFT saves sets as lists and may write null for the pattern dicts in old files.
  if (input.rank_pattern === null) input.rank_pattern = {};
  if (input.alpha_pattern === null) input.alpha_pattern = {};
  return loraConfig(input as LoraConfigInput, file);
}

/** Keys of a PEFT LoraConfig that describe the file or the run, not the adapter's math: accepted and ignored by loraOptions. */
const DESCRIPTIVE = new Set([
  "peft_type",
  "peft_version",
  "auto_mapping",
  "task_type",
  "base_model_name_or_path",
  "revision",
  "inference_mode",
  "megatron_core",
  "qalora_group_size",
  "eva_config",
  "corda_config",
  "runtime_config",
]);
/** Checked only by loraOptions: a non-default value changes training in a way Lowrank does not implement. */
const STRICT_DEFAULTS: Record<string, (v: unknown) => boolean> = { ...MUST_BE_DEFAULT, ensure_weight_tying: (v) => v === false || v == null };

/**
 * PEFT LoraConfig fields (an adapter_config.json, or the fields of a training request) as the
 * options of a new adapter. Stricter than configFromJson: a key that is no LoraConfig field is an
 * error naming it, as is a field Lowrank does not implement set to a non-default value. Every
 * value is checked as loraConfig checks it. The descriptive keys (task_type, peft_version,
 * base_model_name_or_path, ...) are dropped; the rest is returned under PEFT's names.
 */
export function loraOptions(json: unknown, source = "LoraConfig"): LoraConfigInput {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw new LoraConfigError(`${source}: expected a JSON object of PEFT LoraConfig fields`);
  const j = json as Record<string, unknown>;
  const known = new Set<string>([...FIELDS, ...Object.keys(STRICT_DEFAULTS), ...DESCRIPTIVE]);
  const unknown = Object.keys(j).filter((k) => !known.has(k));
  if (unknown.length) {
    throw new LoraConfigError(
      `${source}: unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => JSON.stringify(k)).join(", ")} (${
        unknown.length > 1 ? "not PEFT LoraConfig fields" : "not a PEFT LoraConfig field"
      }; Lowrank reads: ${FIELDS.filter((f) => !DESCRIPTIVE.has(f)).join(", ")})`,
    );
  }
  if (j.peft_type !== undefined && j.peft_type !== "LORA")
    throw new LoraConfigError(`${source}: peft_type = ${show(j.peft_type)} is not supported (only "LORA")`);
  const rejected = Object.entries(STRICT_DEFAULTS)
    .filter(([k, ok]) => k in j && !ok(j[k]))
    .map(([k]) => `${k} = ${show(j[k])}`);
  if (rejected.length)
    throw new LoraConfigError(`${source}: unsupported PEFT options (Lowrank implements plain LoRA and DoRA on Linear layers): ${rejected.join(", ")}`);
  const input: Record<string, unknown> = {};
  for (const f of FIELDS) if (j[f] !== undefined && !DESCRIPTIVE.has(f)) input[f] = j[f];
  if (input.rank_pattern === null) input.rank_pattern = {};
  if (input.alpha_pattern === null) input.alpha_pattern = {};
  loraConfig(input as LoraConfigInput, source); // every value checked, errors named by field
  return input as LoraConfigInput;
}

/**
 * The adapter_config.json object: the keys PEFT's LoraConfig needs (what 0.18 writes, minus the
 * options we do not implement, which keep their defaults when PEFT reads the file), sorted as
 * PEFT's json.dumps(sort_keys=True) sorts them.
 */
export function configToJson(c: LoraConfig, opts: { inferenceMode?: boolean } = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {
    alpha_pattern: { ...c.alpha_pattern },
    base_model_name_or_path: c.base_model_name_or_path,
    bias: c.bias,
    fan_in_fan_out: c.fan_in_fan_out,
    inference_mode: opts.inferenceMode ?? true,
    init_lora_weights: c.init_lora_weights,
    layers_pattern: c.layers_pattern,
    layers_to_transform: c.layers_to_transform,
    lora_alpha: c.lora_alpha,
    lora_dropout: c.lora_dropout,
    modules_to_save: c.modules_to_save,
    peft_type: "LORA",
    peft_version: `${PEFT_FORMAT_VERSION}+lowrank`,
    r: c.r,
    rank_pattern: { ...c.rank_pattern },
    revision: c.revision,
    target_modules: c.target_modules,
    task_type: c.task_type,
    use_dora: c.use_dora,
    use_rslora: c.use_rslora,
  };
  // A newer field only when it is used: older PEFT versions reject keys they do not know.
  if (c.exclude_modules !== null) out.exclude_modules = c.exclude_modules;
  return Object.fromEntries(
    Object.keys(out)
      .sort()
      .map((k) => [k, out[k]]),
  );
}

function checkNames(v: unknown, field: string, errors: string[], allowString: boolean): void {
  if (v === null || v === undefined) return;
  if (typeof v === "string") {
    if (!allowString) errors.push(`${field} = ${show(v)} must be a list of module names`);
    else if (v.toLowerCase() !== INCLUDE_LINEAR_LAYERS_SHORTHAND) {
      try {
        new RegExp(v);
      } catch (e) {
        errors.push(`${field} = ${show(v)} is not a valid regular expression (${(e as Error).message})`);
      }
    }
    return;
  }
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string" && s.length > 0)) {
    errors.push(`${field} = ${show(v)} must be ${allowString ? "a list of non-empty module names or a regex string" : "a list of non-empty module names"}`);
  }
}

function checkPattern(p: unknown, field: string, errors: string[], integer: boolean): void {
  if (typeof p !== "object" || p === null || Array.isArray(p)) {
    errors.push(`${field} = ${show(p)} must be an object mapping module names or regexes to ${integer ? "ranks" : "alphas"}`);
    return;
  }
  for (const [k, v] of Object.entries(p)) {
    if (integer ? !isPosInt(v) : typeof v !== "number" || !Number.isFinite(v)) {
      errors.push(`${field}[${show(k)}] = ${show(v)} must be ${integer ? "a positive integer" : "a finite number"}`);
    }
    try {
      new RegExp(k);
    } catch (e) {
      errors.push(`${field} key ${show(k)} is not a valid regular expression (${(e as Error).message})`);
    }
  }
}

function isPosInt(v: unknown): boolean {
  return Number.isSafeInteger(v) && (v as number) > 0;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export function show(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}
