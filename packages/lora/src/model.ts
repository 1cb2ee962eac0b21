/**
 * Injection and the adapter-level API (PEFT's get_peft_model / LoraModel / PeftModel): wrap the
 * target Linears in LoraLinear via `setSubmodule`, wrap modules_to_save, freeze everything else,
 * and manage several named adapters on one base.
 */
import { type DType, type Tensor, hash32, isFloat } from "@lowrank/tensor";
import type { Module } from "@lowrank/nn";
import { type LoraConfig, type LoraConfigInput, LoraConfigError, loraConfig } from "./config.ts";
import { type BaseLayer, isQuantizedLinear } from "./base-layer.ts";
import { type AdapterOptions, type MergeInfo, type MergeOptions, LoraLinear } from "./layer.ts";
import { ModulesToSaveWrapper } from "./modules-to-save.ts";
import { type InjectionPlan, planInjection } from "./targets.ts";
import { type Combination, type WeightedAdapterOptions, addWeightedAdapter } from "./weighted.ts";

export interface PeftOptions {
  /** Seed of the adapter init streams and dropout masks (default 0); each layer derives its own. */
  seed?: number;
  /** Fill A and B with zeros instead of `init_lora_weights` (the loader overwrites them anyway). */
  zeroInit?: boolean;
  /** Fail when a target_modules list entry matches nothing (default true). */
  strictTargets?: boolean;
  /** Where warnings go (default console.warn). */
  warn?: (message: string) => void;
}

export interface TrainableCount {
  trainable: number;
  all: number;
}

/**
 * A model with LoRA adapters. `model` is the same object you passed in, changed in place (its
 * forward now runs the adapters), so generation and training code use it unchanged.
 */
export class PeftModel<M extends Module = Module> {
  readonly model: M;
  /** Config per adapter name, as it will be saved. */
  readonly peftConfig = new Map<string, LoraConfig>();
  #active: string[] = [];
  readonly #seed: number;
  readonly #warn: (m: string) => void;

  constructor(model: M, opts: PeftOptions = {}) {
    this.model = model;
    this.#seed = opts.seed ?? 0;
    this.#warn = opts.warn ?? ((m) => console.warn(`lowrank/lora: ${m}`));
  }

  get activeAdapters(): readonly string[] {
    return this.#active;
  }

  get activeAdapter(): string {
    if (this.#active.length !== 1) throw new Error(`${this.#active.length} adapters are active (${this.#active.join(", ")}); use activeAdapters`);
    return this.#active[0];
  }

  /** name -> LoraLinear for every wrapped layer. */
  loraLayers(): [string, LoraLinear][] {
    return this.model.namedModules().filter((e): e is [string, LoraLinear] => e[1] instanceof LoraLinear);
  }

  modulesToSaveWrappers(): [string, ModulesToSaveWrapper][] {
    return this.model.namedModules().filter((e): e is [string, ModulesToSaveWrapper] => e[1] instanceof ModulesToSaveWrapper);
  }

  /**
   * Add adapter `name` from `config` (PEFT add_adapter). Nothing changes unless the whole config
   * fits the model. The first adapter becomes active; later ones are added frozen and inactive.
   */
  addAdapter(name: string, input: LoraConfig | LoraConfigInput, opts: PeftOptions = {}): InjectionPlan {
    checkAdapterName(name);
    if (this.peftConfig.has(name)) throw new Error(`adapter '${name}' already exists (adapters: ${[...this.peftConfig.keys()].join(", ")})`);
    const config = loraConfig(input as LoraConfigInput);
    if (this.peftConfig.size > 0 && config.bias !== "none") {
      throw new LoraConfigError(
        `bias = ${JSON.stringify(config.bias)}: only one adapter may train biases; set bias "none" for adapter '${name}' (PEFT has the same rule)`,
      );
    }
    if (this.peftConfig.size > 0 && [...this.peftConfig.values()].some((c) => c.bias !== "none")) {
      throw new LoraConfigError(
        `adapter '${
          [...this.peftConfig].find(([, c]) => c.bias !== "none")?.[0]
        }' trains biases; a model with a bias-training adapter cannot take a second adapter`,
      );
    }
    const plan = planInjection(this.model, config, { strictEntries: opts.strictTargets ?? true });
    for (const w of plan.warnings) (opts.warn ?? this.#warn)(w);
    const first = this.peftConfig.size === 0;
    const tied = tiedNames(this.model);
    const seed = opts.seed ?? this.#seed;
    for (const t of plan.targets) {
      let layer: LoraLinear;
      if (t.module instanceof LoraLinear) layer = t.module;
      else {
        layer = new LoraLinear(t.module as BaseLayer, t.name);
        const w = (t.module as { weight?: Tensor }).weight;
        if (w && tied.has(w)) {
          const others = (tied.get(w) as string[]).filter((n) => n !== `${t.name}.weight`);
          if (others.length) {
            layer.tiedWith = others.join(", ");
            (opts.warn ?? this.#warn)(`${t.name}.weight is tied to ${layer.tiedWith}: the adapter trains fine, but merging into it is refused`);
          }
        }
        this.model.setSubmodule(t.name, layer);
      }
      const spec: AdapterOptions = {
        r: t.r,
        alpha: t.alpha,
        dropout: plan.config.lora_dropout,
        useRslora: plan.config.use_rslora,
        useDora: plan.config.use_dora,
        init: opts.zeroInit ? "zeros" : plan.config.init_lora_weights,
        seed: hash32(seed ^ hash32(stringHash(`${t.name}\u0000${name}`))),
      };
      layer.addAdapter(name, spec);
    }
    for (const { name: path, module } of plan.modulesToSave) {
      let wrapper: ModulesToSaveWrapper;
      if (module instanceof ModulesToSaveWrapper) wrapper = module;
      else {
        wrapper = new ModulesToSaveWrapper(module, path);
        this.model.setSubmodule(path, wrapper);
      }
      wrapper.addAdapter(name);
    }
    this.peftConfig.set(name, plan.config);
    this.model.nameParameters();
    if (first) this.setAdapter(name);
    else this.#applyActive();
    return plan;
  }

  /**
   * Activate one adapter or several (their outputs add up). The active adapters train; every
   * other parameter is frozen, except biases per the active config's `bias` (PEFT
   * _mark_only_adapters_as_trainable + set_adapter).
   */
  setAdapter(names: string | readonly string[]): void {
    const list = typeof names === "string" ? [names] : [...names];
    for (const n of list) if (!this.peftConfig.has(n)) throw new Error(`no adapter '${n}' (adapters: ${[...this.peftConfig.keys()].join(", ") || "none"})`);
    for (const [path, l] of this.loraLayers()) {
      if (l.merged) throw new Error(`${path} has merged adapters (${l.mergedAdapters.join(", ")}); unmerge() before switching adapters`);
    }
    this.#active = list;
    this.#applyActive();
  }

  #applyActive(): void {
    this.model.setRequiresGrad(false);
    for (const [, l] of this.loraLayers()) {
      l.setActiveAdapters(this.#active);
      for (const a of l.adapters()) l.setTrainable(a, this.#active.includes(a));
    }
    for (const [, w] of this.modulesToSaveWrappers()) w.setAdapter(this.#active);
    for (const a of this.#active) {
      const bias = (this.peftConfig.get(a) as LoraConfig).bias;
      for (const [, t] of biasParameters(this, bias)) if (isFloat(t.dtype)) t.setRequiresGrad(true);
    }
  }

  /**
   * Serve a batch whose rows use different adapters: rows[i] names the adapter of input row i (the
   * flattened leading dims; null = the base alone). Each LoRA layer then runs the base over every
   * row and all the adapters' branches at once, each row masked to its own (LoraLinear's stacked
   * factors). Plain LoRA adapters only (rowBatchable); null ends it (setAdapter's adapters apply
   * again). Inference only.
   */
  setRowAdapters(rows: readonly (string | null)[] | null): void {
    for (const n of new Set(rows ?? [])) {
      if (n !== null && !this.rowBatchable(n))
        throw new Error(`adapter '${n}' cannot share a batch with others (DoRA, modules_to_save or trained biases); serve it alone with setAdapter`);
    }
    const list = rows ? [...rows] : null; // a new array: layers rebuild their stacks for it
    for (const [, l] of this.loraLayers()) {
      l.rowAdapters = list;
      if (!list) l.releaseRowStack();
    }
  }

  /** Whether an adapter can share a batch with others row by row: plain LoRA, nothing outside its A and B. */
  rowBatchable(name: string): boolean {
    const c = this.peftConfig.get(name);
    if (!c) throw new Error(`no adapter '${name}' (adapters: ${[...this.peftConfig.keys()].join(", ") || "none"})`);
    return !c.use_dora && !c.modules_to_save?.length && c.bias === "none";
  }

  /** Remove an adapter everywhere and free its weights. */
  deleteAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`no adapter '${name}' (adapters: ${[...this.peftConfig.keys()].join(", ") || "none"})`);
    for (const [, l] of this.loraLayers()) l.deleteAdapter(name);
    for (const [, w] of this.modulesToSaveWrappers()) w.deleteAdapter(name);
    this.peftConfig.delete(name);
    const left = this.#active.filter((n) => n !== name);
    this.#active = left.length || this.peftConfig.size === 0 ? left : [[...this.peftConfig.keys()][0]];
    this.#applyActive();
  }

  /** Run `fn` on the bare base model (PEFT disable_adapter()); async functions are awaited before re-enabling. */
  withAdaptersDisabled<T>(fn: () => T): T {
    const layers = [...this.loraLayers().map(([, l]) => l), ...this.modulesToSaveWrappers().map(([, w]) => w)];
    const merged = this.loraLayers().filter(([, l]) => l.merged);
    if (merged.length)
      throw new Error(`adapters are merged into ${merged.length} layer(s) (e.g. ${merged[0][0]}); unmerge() before running the base model alone`);
    const prev = layers.map((l) => l.disabled);
    const restore = () => layers.forEach((l, i) => (l.disabled = prev[i]));
    for (const l of layers) l.disabled = true;
    let out: T;
    try {
      out = fn();
    } catch (e) {
      restore();
      throw e;
    }
    if (out instanceof Promise) return out.finally(restore) as T;
    restore();
    return out;
  }

  /**
   * Fold the active (or named) adapters into the base weights; reversible with unmerge(). With
   * `safe`, every merged weight is checked for NaN/Inf before any is written. If writing fails
   * midway (a quantized base refusing), the layers merged by this call are unmerged again.
   */
  async merge(opts: MergeOptions = {}): Promise<MergeInfo[]> {
    const names = opts.adapterNames ?? this.#active;
    for (const n of names) if (!this.peftConfig.has(n)) throw new Error(`no adapter '${n}' (adapters: ${[...this.peftConfig.keys()].join(", ")})`);
    const layers = this.loraLayers();
    const tied = layers.find(([, l]) => l.tiedWith && names.some((n) => l.r.has(n) && !l.mergedAdapters.includes(n)));
    if (tied) throw new Error(`${tied[0]}: cannot merge: its weight is tied to ${tied[1].tiedWith}, so merging would change both`);
    // safe: every layer is checked before any weight is written.
    if (opts.safe) for (const [, l] of layers) await l.checkMerge(names);
    const out: MergeInfo[] = [];
    const done: [LoraLinear, number][] = [];
    try {
      for (const [, l] of layers) {
        const info = await l.merge({ adapterNames: names });
        if (info.length) done.push([l, info.length]);
        out.push(...info);
      }
    } catch (e) {
      for (const [l, count] of done.reverse()) await l.unmerge(count);
      throw e;
    }
    return out;
  }

  /** Undo every merge, newest first. */
  async unmerge(): Promise<MergeInfo[]> {
    const out: MergeInfo[] = [];
    for (const [, l] of this.loraLayers()) out.push(...(await l.unmerge()));
    return out;
  }

  /**
   * Merge the active adapters and remove every LoRA wrapper, giving back the plain model with
   * its original module names (PEFT merge_and_unload). modules_to_save copies replace the
   * originals. With `dequantize`, 4-bit bases are replaced by dense Linears holding dequant(W) + ΔW
   * (in `dtype`, default f32) instead of being requantized.
   */
  async mergeAndUnload(opts: MergeOptions & { dequantize?: boolean; dtype?: DType } = {}): Promise<{ model: M; merged: MergeInfo[] }> {
    // dequantize: 4-bit bases become dense dequant(W) first, so the merge is exact (no requantization).
    if (opts.dequantize) for (const [, l] of this.loraLayers()) l.densify(opts.dtype ?? "f32");
    const merged = await this.merge(opts);
    this.#unwrap(true);
    return { model: this.model, merged };
  }

  /** Remove the wrappers without merging (PEFT unload): the original model back. */
  unload(): M {
    const merged = this.loraLayers().filter(([, l]) => l.merged);
    if (merged.length)
      throw new Error(`adapters are merged into ${merged[0][0]} and ${merged.length - 1} more layer(s); unmerge() first or use mergeAndUnload()`);
    this.#unwrap(false);
    return this.model;
  }

  #unwrap(keepTrained: boolean): void {
    for (const [path, l] of this.loraLayers()) {
      for (const a of l.adapters()) for (const t of l.adapterParameters(a)) t.dispose();
      this.model.setSubmodule(path, l.base_layer);
    }
    const dropped: Module[] = [];
    for (const [path, w] of this.modulesToSaveWrappers()) {
      const active = keepTrained && w.activeAdapter !== null ? w.modules_to_save.get(w.activeAdapter) : w.original_module;
      for (const m of [w.original_module, ...w.adapters().map((a) => w.modules_to_save.get(a))]) if (m !== active) dropped.push(m);
      this.model.setSubmodule(path, active);
    }
    // A replaced original may share its weight with a module that stays (a tied lm_head): free only what is unreachable now.
    const live = new Set<Tensor>([...this.model.parameters(), ...this.model.stateDict().values()]);
    for (const m of dropped) for (const t of [...m.parameters(), ...m.stateDict().values()]) if (!live.has(t)) t.dispose();
    this.peftConfig.clear();
    this.#active = [];
    this.model.nameParameters();
  }

  /** Build `adapterName` from weighted existing adapters (PEFT add_weighted_adapter; see weighted.ts). */
  addWeightedAdapter(
    adapters: string[],
    weights: number[],
    adapterName: string,
    combination: Combination = "svd",
    opts: WeightedAdapterOptions = {},
  ): Promise<void> {
    return addWeightedAdapter(this, adapters, weights, adapterName, combination, opts);
  }

  /** Trainable and total parameter counts, as PEFT's get_nb_trainable_parameters counts them. */
  countParameters(): TrainableCount {
    let trainable = 0;
    let all = 0;
    for (const [, t] of this.model.namedParameters()) {
      // 4-bit weights hold two values per byte: PEFT counts Params4bit as numel * 2.
      const n = t.dtype === "u8" ? t.size * 2 : t.size;
      all += n;
      if (t.requiresGrad) trainable += n;
    }
    // nn's QuantizedLinear keeps its packed weight in buffers: count its out·in values (frozen).
    for (const [, m] of this.model.namedModules())
      if (isQuantizedLinear(m) && !m.namedParameters().some(([, t]) => t.dtype === "u8")) all += m.inFeatures * m.outFeatures;
    return { trainable, all };
  }

  /** PEFT's line: "trainable params: 1,234 || all params: 5,678 || trainable%: 21.7323". */
  printTrainableParameters(log: (line: string) => void = console.log): string {
    const { trainable, all } = this.countParameters();
    const line = formatTrainable(trainable, all);
    log(line);
    return line;
  }

  /** The parameters that train now, by name. */
  namedTrainableParameters(): [string, Tensor][] {
    return this.model.namedParameters().filter(([, t]) => t.requiresGrad);
  }

  trainableParameters(): Tensor[] {
    return this.namedTrainableParameters().map(([, t]) => t);
  }

  /** True when some wrapped base is quantized (merging then requantizes). */
  get hasQuantizedBase(): boolean {
    return this.loraLayers().some(([, l]) => isQuantizedLinear(l.base_layer));
  }
}

/** Wrap `model` with adapter `adapterName` from `config` (PEFT get_peft_model). */
export function getPeftModel<M extends Module>(model: M, config: LoraConfig | LoraConfigInput, adapterName = "default", opts: PeftOptions = {}): PeftModel<M> {
  const peft = new PeftModel(model, opts);
  peft.addAdapter(adapterName, config, opts);
  return peft;
}

/** Run `fn` with every adapter switched off (the base model alone), then switch them back on. */
export function withAdaptersDisabled<T>(peft: PeftModel, fn: () => T): T {
  return peft.withAdaptersDisabled(fn);
}

/** PEFT print_trainable_parameters: `{:,d}` counts and the percentage with 4 decimals. */
export function formatTrainable(trainable: number, all: number): string {
  const pct = all === 0 ? 0 : (100 * trainable) / all;
  return `trainable params: ${groupThousands(trainable)} || all params: ${groupThousands(all)} || trainable%: ${pythonFixed(pct, 4)}`;
}

/** Python's f"{x:.{d}f}": like toFixed, but an exact tie rounds half to even (toFixed rounds it up). */
export function pythonFixed(x: number, digits: number): string {
  const s = x.toFixed(digits);
  const exact = x.toFixed(100); // the double's exact decimal expansion (for |x| < 1e21)
  const dot = exact.indexOf(".");
  const rest = exact.slice(dot + 1 + digits);
  if (!/^50*$/.test(rest)) return s;
  const down = exact.slice(0, dot + 1 + digits).replace(/\.$/, "");
  const lastDigit = Number(down[down.length - 1]);
  return lastDigit % 2 === 0 ? down : s;
}

function groupThousands(n: number): string {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/**
 * Bias parameters that train (and are saved) for `bias`: "all" = every parameter named *bias*
 * outside the adapters; "lora_only" = the biases of LoRA-wrapped base layers.
 */
export function biasParameters(peft: PeftModel, bias: LoraConfig["bias"]): [string, Tensor][] {
  if (bias === "none") return [];
  if (bias === "all") return peft.model.namedParameters().filter(([n]) => /(^|\.)bias$/.test(n) && !/(^|\.)lora_/.test(n));
  const out: [string, Tensor][] = [];
  for (const [path, l] of peft.loraLayers()) {
    const b = l.base_layer.bias;
    if (b) out.push([`${path}.base_layer.bias`, b]);
  }
  return out;
}

/** tensor -> every name it is reachable under, for tensors with more than one (tied weights). */
function tiedNames(model: Module): Map<Tensor, string[]> {
  const byTensor = new Map<Tensor, string[]>();
  for (const [name, m] of model.namedModules()) {
    for (const [p, t] of m.namedParameters()) {
      if (p.includes(".")) continue; // direct parameters only
      const full = name ? `${name}.${p}` : p;
      const list = byTensor.get(t) ?? [];
      if (!list.includes(full)) list.push(full);
      byTensor.set(t, list);
    }
  }
  return new Map([...byTensor].filter(([, names]) => names.length > 1));
}

function checkAdapterName(name: string): void {
  if (!name || name.includes(".") || name.includes("/") || name.includes("\\")) {
    throw new Error(`invalid adapter name '${name}': must be non-empty without '.', '/' or '\\' (it becomes a module name and maybe a folder)`);
  }
}

function stringHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
