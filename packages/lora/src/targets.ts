/**
 * Which modules an adapter wraps, resolved exactly as PEFT does (tuners_utils.py
 * check_target_module_exists, _maybe_include_all_linear_layers, _find_minimal_target_modules;
 * lora/model.py rank/alpha patterns). Everything is checked before the model is touched, and
 * every problem is reported with the module names involved.
 */
import { LlamaForCausalLM, type Module } from "@lowrank/nn";
import { type LoraConfig, DEFAULT_TARGET_MODULES, INCLUDE_LINEAR_LAYERS_SHORTHAND, LoraConfigError, show } from "./config.ts";
import { type BaseLayer, isLinearLike } from "./base-layer.ts";
import { LoraLinear } from "./layer.ts";
import { ModulesToSaveWrapper } from "./modules-to-save.ts";

export interface TargetPlan {
  /** Dotted module path (`model.layers.0.self_attn.q_proj`). */
  name: string;
  /** The module there now: a base layer, or a LoraLinear already holding other adapters. */
  module: BaseLayer | LoraLinear;
  r: number;
  alpha: number;
  inFeatures: number;
  outFeatures: number;
}

export interface InjectionPlan {
  /** The config as it will be stored: all-linear expanded, long lists minimized, fan_in_fan_out reset for Linear. */
  config: LoraConfig;
  targets: TargetPlan[];
  /** modules_to_save entries resolved to module paths (existing wrappers included). */
  modulesToSave: { name: string; module: Module }[];
  warnings: string[];
}

export interface PlanOptions {
  /** Fail when a target_modules list entry matches nothing (default true; loading a PEFT file relaxes it). */
  strictEntries?: boolean;
}

/** PEFT's MIN_TARGET_MODULES_FOR_OPTIMIZATION: longer name lists are condensed to suffixes. */
const MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20;

/** The model's module names, skipping what lives inside LoRA wrappers (never a target themselves). */
export function candidateModules(model: Module): [string, Module][] {
  const out: [string, Module][] = [];
  const inside: string[] = [];
  for (const [name, m] of model.namedModules()) {
    if (name === "") continue;
    if (inside.some((p) => name.startsWith(p))) continue;
    out.push([name, m]);
    if (m instanceof LoraLinear || m instanceof ModulesToSaveWrapper) inside.push(`${name}.`);
  }
  return out;
}

/** PEFT's full-match for regex strings. */
export function fullMatch(pattern: string, key: string): boolean {
  return new RegExp(`^(?:${pattern})$`).test(key);
}

/** A list entry matches a module when the name equals it or ends with "." + entry. */
export function suffixMatch(key: string, entry: string): boolean {
  return key === entry || key.endsWith(`.${entry}`);
}

/** The layer index PEFT reads from a module name (first numbered segment, or the one after a layers_pattern). */
export function layerIndex(key: string, layersPattern: string | string[] | null): number | null {
  const patterns = layersPattern === null || layersPattern.length === 0 ? null : typeof layersPattern === "string" ? [layersPattern] : layersPattern;
  if (!patterns) {
    const m = /^.*?\.[^.]*\.(\d+)\./.exec(key);
    return m ? Number(m[1]) : null;
  }
  for (const p of patterns) {
    const m = new RegExp(`^.*?\\.(?:${p})\\.(\\d+)\\.`).exec(key);
    if (m) return Number(m[1]);
  }
  return null;
}

/** PEFT check_target_module_exists: exclusion, modules_to_save overlap, list/regex match, layer filter. */
export function isTargeted(config: LoraConfig, key: string): boolean {
  const ex = config.exclude_modules;
  if (ex) {
    if (typeof ex === "string" ? fullMatch(ex, key) : ex.some((e) => suffixMatch(key, e))) return false;
  }
  if (config.modules_to_save?.some((m) => new RegExp(`(^|.*\\.)${m}($|\\..*)`).test(key))) return false;
  const tm = config.target_modules;
  if (tm === null) return false;
  if (typeof tm === "string") return fullMatch(tm, key);
  if (tm.includes(key)) return true;
  if (!tm.some((t) => key.endsWith(`.${t}`))) return false;
  const layers = config.layers_to_transform;
  if (layers === null || (Array.isArray(layers) && layers.length === 0)) return true;
  const idx = layerIndex(key, config.layers_pattern);
  if (idx === null) return false;
  return typeof layers === "number" ? idx === layers : layers.includes(idx);
}

/** PEFT get_pattern_key: the first pattern key k with /^(.*\.)?(k)$/ matching the module name. */
export function patternKey(keys: readonly string[], name: string): string | null {
  for (const k of keys) if (new RegExp(`^(.*\\.)?(${k})$`).test(name)) return k;
  return null;
}

export function rankFor(config: LoraConfig, name: string): number {
  const k = patternKey(Object.keys(config.rank_pattern), name);
  return k === null ? config.r : config.rank_pattern[k];
}

export function alphaFor(config: LoraConfig, name: string): number {
  const k = patternKey(Object.keys(config.alpha_pattern), name);
  return k === null ? config.lora_alpha : config.alpha_pattern[k];
}

/** The modules LoRA can wrap, by name (LoRA layers count as the Linear they wrap). */
function linearNames(cands: [string, Module][]): string[] {
  return cands.filter(([, m]) => m instanceof LoraLinear || isLinearLike(m)).map(([n]) => n);
}

/** "q_proj, k_proj, ... (35 in all, e.g. model.layers.0.self_attn.q_proj)": short enough for an error. */
function describeLinears(names: string[]): string {
  if (names.length === 0) return "none";
  const suffixes = [...new Set(names.map((n) => n.slice(n.lastIndexOf(".") + 1)))];
  return `${suffixes.join(", ")} (${names.length} in all, e.g. ${names[0]})`;
}

/**
 * PEFT _find_minimal_target_modules: the fewest name suffixes that pick exactly these modules
 * and none of the others (so a saved config lists "q_proj" instead of 32 full names).
 */
export function minimalTargetModules(targets: readonly string[], others: readonly string[]): string[] {
  const suffixes = (s: string) => {
    const parts = s.split(".");
    return parts.map((_, i) => parts.slice(i).join(".")).reverse(); // shortest first
  };
  const otherSuffixes = new Set(others.flatMap(suffixes));
  const required = new Set<string>();
  const items = [...new Set(targets)].map((t) => [t, suffixes(t)] as const).sort((a, b) => cmpLists(a[1], b[1]));
  for (const [item, sfx] of items) {
    for (const s of sfx) {
      if (required.has(s) || otherSuffixes.has(s)) continue;
      if (![...required].some((r) => item.endsWith(`.${r}`))) {
        required.add(s);
        break;
      }
    }
  }
  return required.size ? [...required].sort() : [...new Set(targets)];
}

function cmpLists(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return a.length - b.length;
}

/**
 * Resolve `config` against `model`: the modules to wrap with their r and alpha, and the
 * modules_to_save. Throws one LoraConfigError listing every problem; changes nothing.
 */
export function planInjection(model: Module, input: LoraConfig, opts: PlanOptions = {}): InjectionPlan {
  const strict = opts.strictEntries ?? true;
  const config: LoraConfig = { ...input };
  const warnings: string[] = [];
  const errors: string[] = [];
  const cands = candidateModules(model);
  const linears = linearNames(cands);

  // PEFT users pass task_type="CAUSAL_LM" for decoder LMs; PEFT then loads the file with PeftModelForCausalLM.
  if (config.task_type === null && model instanceof LlamaForCausalLM) config.task_type = "CAUSAL_LM";
  if (config.target_modules === null) {
    const type = (model as { config?: { model_type?: string } }).config?.model_type;
    const dflt = type ? DEFAULT_TARGET_MODULES[type] : undefined;
    if (!dflt)
      throw new LoraConfigError(
        `target_modules is not set and there is no default for model_type ${show(
          type ?? null,
        )}; set target_modules (available Linear modules: ${describeLinears(linears)})`,
      );
    config.target_modules = [...dflt];
  }
  if (typeof config.target_modules === "string" && config.target_modules.toLowerCase() === INCLUDE_LINEAR_LAYERS_SHORTHAND) {
    // Every Linear except the output head (PEFT drops get_output_embeddings(): lm_head here).
    const head = (model as { lm_head?: Module }).lm_head;
    config.target_modules = linears.filter((n) => !(head && model.getSubmodule(n) === head));
  }
  if (Array.isArray(config.target_modules) && config.target_modules.length === 0) {
    throw new LoraConfigError("target_modules is an empty list: nothing to adapt (PEFT uses [] only with target_parameters, which Lowrank does not implement)");
  }

  const targets: TargetPlan[] = [];
  const matchedEntries = new Set<string>();
  const tm = config.target_modules;
  for (const [name, m] of cands) {
    if (Array.isArray(tm)) for (const e of tm) if (suffixMatch(name, e)) matchedEntries.add(e);
    if (!isTargeted(config, name)) continue;
    if (!(m instanceof LoraLinear) && !isLinearLike(m)) {
      const hint =
        m.constructor.name === "Embedding"
          ? `; LoRA on embeddings is not implemented: train it in full with modules_to_save: [${show(name.slice(name.lastIndexOf(".") + 1))}]`
          : "";
      errors.push(`${name} (${m.constructor.name}) matches target_modules but is not a Linear layer; LoRA wraps Linear layers only${hint}`);
      continue;
    }
    const r = rankFor(config, name);
    const alpha = alphaFor(config, name);
    const { inFeatures, outFeatures } = m as BaseLayer;
    const maxR = Math.min(inFeatures, outFeatures);
    if (r > maxR) errors.push(`${name}: r = ${r} is larger than min(in_features ${inFeatures}, out_features ${outFeatures}) = ${maxR}`);
    targets.push({ name, module: m as BaseLayer | LoraLinear, r, alpha, inFeatures, outFeatures });
  }
  if (targets.length === 0 && errors.length === 0) {
    const what = typeof tm === "string" ? `target_modules ${show(tm)} (a full-match regex)` : `target_modules ${show(tm)}`;
    const excl = config.exclude_modules || config.layers_to_transform !== null ? " after exclude_modules/layers_to_transform" : "";
    errors.push(`${what} matched no module${excl}; available Linear modules: ${describeLinears(linears)}`);
  } else if (strict && Array.isArray(tm)) {
    const unmatched = tm.filter((e) => !matchedEntries.has(e));
    if (unmatched.length) errors.push(`target_modules ${show(unmatched)} matched no module; available Linear modules: ${describeLinears(linears)}`);
  }

  const modulesToSave: { name: string; module: Module }[] = [];
  for (const entry of config.modules_to_save ?? []) {
    const hits = cands.filter(([n]) => suffixMatch(n, entry));
    if (hits.length === 0) errors.push(`modules_to_save entry ${show(entry)} matched no module`);
    for (const [name, module] of hits) modulesToSave.push({ name, module });
  }

  if (config.fan_in_fan_out && targets.some((t) => !(t.module instanceof LoraLinear))) {
    warnings.push("fan_in_fan_out is true but the targets are Linear layers with [out, in] weights; setting fan_in_fan_out to false (as PEFT does)");
    config.fan_in_fan_out = false;
  }
  if (errors.length) throw new LoraConfigError(`LoRA config does not fit the model:\n  ${errors.join("\n  ")}`);

  if (Array.isArray(config.target_modules) && config.target_modules.length >= MIN_TARGET_MODULES_FOR_OPTIMIZATION) {
    const chosen = config.target_modules;
    const others = cands.map(([n]) => n).filter((n) => !chosen.some((s) => suffixMatch(n, s)));
    const minimal = minimalTargetModules(chosen, others);
    if (minimal.length < chosen.length) config.target_modules = minimal;
  }
  return { config, targets, modulesToSave, warnings };
}
