/**
 * A torch-style module tree. Children and parameters are registered under names, and the tree is
 * addressed with dotted paths (`model.layers.0.self_attn.q_proj`) so Hugging Face and PEFT keys
 * map one to one. Parameters are leaf Tensors that stay the same objects for their whole life:
 * loading and optimizer steps swap their storage with `tensor.assign()`.
 */
import { type Backend, type DType, type Tensor, full, getDefaultBackend, isFloat, keep, shapeStr, tensor } from "@lowrank/tensor";

/** What a module must offer to stand in for a layer (a LoRA wrapper replacing a Linear, say). */
export type TensorModule = Module & { forward(x: Tensor): Tensor };

/** Key problems found when a state dict is compared with a module (see `loadStateDict`). */
export interface StateDictReport {
  missingKeys: string[];
  unexpectedKeys: string[];
}

export interface LoadStateDictOptions {
  /** Throw when a key is missing or unexpected (default true). Shape and dtype mismatches always throw. */
  strict?: boolean;
}

/** The shape and dtype of one entry, enough to check a checkpoint before reading its bytes. */
export interface TensorSpec {
  readonly shape: readonly number[];
  readonly dtype: DType;
}

export class Module {
  /** True after `train()`, false after `eval()` (torch's default is training). */
  training = true;
  readonly #params = new Map<string, Tensor | null>();
  readonly #buffers = new Map<string, { t: Tensor; persistent: boolean }>();
  readonly #children = new Map<string, Module>();

  // ---- registration ----

  /** Register a parameter (null = an optional one that is absent, like a disabled bias). The module owns it. */
  protected registerParameter<T extends Tensor | null>(name: string, t: T): T {
    checkName(name);
    if (t) keep(t);
    this.#params.set(name, t);
    return t;
  }

  /**
   * Register a buffer: state that is not trained. Non-persistent buffers (RoPE tables) stay out of
   * stateDict. Buffer names may be dotted ("weight.absmax"): bitsandbytes keeps a 4-bit layer's
   * quant state under its weight's name.
   */
  protected registerBuffer(name: string, t: Tensor, opts: { persistent?: boolean } = {}): Tensor {
    for (const part of name.split(".")) checkName(part);
    const old = this.#buffers.get(name);
    if (old && old.t !== t) old.t.dispose();
    this.#buffers.set(name, { t: keep(t), persistent: opts.persistent ?? true });
    return t;
  }

  protected getBuffer(name: string): Tensor | undefined {
    return this.#buffers.get(name)?.t;
  }

  protected registerModule<M extends Module>(name: string, m: M): M {
    checkName(name);
    this.#children.set(name, m);
    return m;
  }

  // ---- traversal ----

  /** Direct children in registration order. */
  children(): [string, Module][] {
    return [...this.#children];
  }

  /** Every module in the tree, depth first, the root first under "". */
  namedModules(prefix = ""): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [name, child] of this.#children) out.push(...child.namedModules(join(prefix, name)));
    return out;
  }

  /** Parameters with their dotted names. A tensor shared by two modules (tied embeddings) is listed once, under its first name. */
  namedParameters(prefix = ""): [string, Tensor][] {
    const seen = new Set<Tensor>();
    return this.#allParams(prefix).filter(([, t]) => !seen.has(t) && (seen.add(t), true));
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Every (name, parameter) pair, duplicates of shared tensors included. */
  #allParams(prefix: string): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, t] of this.#params) if (t) out.push([join(prefix, name), t]);
    for (const [name, child] of this.#children) out.push(...child.#allParams(join(prefix, name)));
    return out;
  }

  #allBuffers(prefix: string, persistentOnly: boolean): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, b] of this.#buffers) if (b.persistent || !persistentOnly) out.push([join(prefix, name), b.t]);
    for (const [name, child] of this.#children) out.push(...child.#allBuffers(join(prefix, name), persistentOnly));
    return out;
  }

  /** The module at a dotted path ("" is this module). */
  getSubmodule(path: string): Module {
    let m: Module = this;
    if (path === "") return m;
    const parts = path.split(".");
    for (let i = 0; i < parts.length; i++) {
      const next = m.#children.get(parts[i]);
      if (!next) {
        const at = parts.slice(0, i).join(".");
        const names = [...m.#children.keys()];
        throw new Error(`no submodule '${path}': '${at || "<root>"}' has no child '${parts[i]}' (children: ${names.join(", ") || "none"})`);
      }
      m = next;
    }
    return m;
  }

  /**
   * Replace the existing child at `path` with `module`, e.g. a LoRA layer wrapping the Linear it
   * replaces. The parent's same-named field (`self_attn.q_proj`) is updated too, so forward code
   * that reads the field sees the new module.
   */
  setSubmodule(path: string, module: Module): void {
    const dot = path.lastIndexOf(".");
    const parent = this.getSubmodule(dot < 0 ? "" : path.slice(0, dot));
    const name = path.slice(dot + 1);
    const old = parent.#children.get(name);
    if (!old) throw new Error(`setSubmodule: '${path}' does not exist; only existing children can be replaced`);
    parent.#children.set(name, module);
    const fields = parent as unknown as Record<string, unknown>;
    if (Object.hasOwn(fields, name) && fields[name] === old) fields[name] = module;
  }

  // ---- state ----

  /**
   * Persistent state by dotted name: the live parameter and buffer tensors (not copies; do not
   * dispose them). Shared tensors appear once, under their first name, as Hugging Face saves tied
   * weights.
   */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    const seen = new Set<Tensor>();
    for (const [name, t] of [...this.#allParams(""), ...this.#allBuffers("", true)]) {
      if (seen.has(t)) continue;
      seen.add(t);
      out.set(name, t);
    }
    return out;
  }

  /**
   * Check a checkpoint's names, shapes and dtypes against this module without touching data.
   * Every problem is collected, so one error names every missing and unexpected key and every
   * mismatch. A second name of a shared tensor (`lm_head.weight` when tied) is accepted.
   */
  checkStateDict(given: ReadonlyMap<string, TensorSpec>, opts: LoadStateDictOptions & { source?: string } = {}): StateDictReport {
    const targets = this.#targets();
    const canonical = this.stateDict();
    const covered = new Set<Tensor>();
    const unexpectedKeys: string[] = [];
    const mismatches: string[] = [];
    for (const [name, spec] of given) {
      const t = targets.get(name);
      if (!t) {
        unexpectedKeys.push(name);
        continue;
      }
      covered.add(t);
      if (spec.shape.length !== t.shape.length || spec.shape.some((d, i) => d !== t.shape[i])) {
        mismatches.push(`shape mismatch for ${name}: checkpoint ${shapeStr(spec.shape)}, model ${shapeStr(t.shape)}`);
      } else if (spec.dtype !== t.dtype) {
        mismatches.push(`dtype mismatch for ${name}: checkpoint ${spec.dtype}, model ${t.dtype}`);
      }
    }
    const missingKeys = [...canonical].filter(([, t]) => !covered.has(t)).map(([name]) => name);
    const strict = opts.strict ?? true;
    if (mismatches.length || (strict && (missingKeys.length || unexpectedKeys.length))) {
      throw new Error(stateDictMessage(opts.source ?? "loadStateDict", strict ? missingKeys : [], strict ? unexpectedKeys : [], mismatches));
    }
    return { missingKeys, unexpectedKeys };
  }

  /**
   * Load tensors by name. Everything is checked first (nothing changes if anything is wrong);
   * then each parameter takes the given tensor's storage with `assign` (no copy). Returns the
   * missing and unexpected keys (only non-empty when `strict: false`).
   */
  loadStateDict(dict: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>, opts: LoadStateDictOptions = {}): StateDictReport {
    const entries = dict instanceof Map ? [...dict] : Object.entries(dict as Record<string, Tensor>);
    const report = this.checkStateDict(new Map(entries), opts);
    const targets = this.#targets();
    for (const [name, src] of entries) targets.get(name)?.assign(src);
    return report;
  }

  /** The parameter or persistent buffer under a dotted name, including second names of shared tensors. */
  tensorAt(name: string): Tensor | undefined {
    return this.#targets().get(name);
  }

  /** name -> tensor for every name a tensor is reachable under (aliases of shared tensors included). */
  #targets(): Map<string, Tensor> {
    return new Map([...this.#allParams(""), ...this.#allBuffers("", true)]);
  }

  // ---- modes, grads, lifetime ----

  train(on = true): this {
    for (const [, m] of this.namedModules()) m.training = on;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Turn gradients on or off for every float parameter (off = frozen, as for a LoRA base). */
  setRequiresGrad(on: boolean): this {
    for (const p of this.parameters()) if (isFloat(p.dtype)) p.setRequiresGrad(on);
    return this;
  }

  /** Give each parameter its dotted name, so tensor errors say `model.norm.weight f32[64]`. */
  nameParameters(): this {
    for (const [name, t] of this.namedParameters()) t.name = name;
    return this;
  }

  /** Free every parameter and buffer in the tree. Shared storages live on while anything else holds them. */
  dispose(): void {
    for (const [, t] of this.#allParams("")) t.dispose();
    for (const [, t] of this.#allBuffers("", false)) t.dispose();
  }
}

/** An indexed list of modules, registered as "0", "1", ... like torch.nn.ModuleList. */
export class ModuleList<M extends Module = Module> extends Module {
  readonly length: number;
  constructor(items: M[]) {
    super();
    items.forEach((m, i) => this.registerModule(String(i), m));
    this.length = items.length;
  }
  /** Reads through the registry, so `setSubmodule("layers.3", ...)` is seen here. */
  at(i: number): M {
    return this.getSubmodule(String(i)) as M;
  }
  *[Symbol.iterator](): Iterator<M> {
    for (let i = 0; i < this.length; i++) yield this.at(i);
  }
}

function join(prefix: string, name: string): string {
  return prefix ? `${prefix}.${name}` : name;
}

function checkName(name: string): void {
  if (!name || name.includes(".")) throw new Error(`invalid module/parameter name '${name}': must be non-empty without '.'`);
}

function stateDictMessage(source: string, missing: string[], unexpected: string[], mismatches: string[]): string {
  const counts = [
    missing.length && `${missing.length} missing key${missing.length === 1 ? "" : "s"}`,
    unexpected.length && `${unexpected.length} unexpected key${unexpected.length === 1 ? "" : "s"}`,
    mismatches.length && `${mismatches.length} mismatch${mismatches.length === 1 ? "" : "es"}`,
  ].filter(Boolean);
  const lines = [...missing.map((k) => `  missing: ${k}`), ...unexpected.map((k) => `  unexpected: ${k}`), ...mismatches.map((m) => `  ${m}`)];
  return `${source}: state dict does not match the model (${counts.join(", ")}):\n${lines.join("\n")}`;
}

// ---------------------------------------------------------------- parameter creation

export interface ParamOptions {
  backend?: Backend;
  dtype?: DType;
  /** How fresh parameters are filled (default `placeholderInit`: no memory until weights are loaded). */
  init?: Init;
}

/** What a fresh parameter is for: weights get the random fill, biases zeros, norm gains ones. */
export type ParamRole = "weight" | "bias" | "norm";

export type Init = (shape: readonly number[], role: ParamRole, dtype: DType, backend: Backend) => Tensor;

/**
 * Zeros (ones for norm gains) as a stride-0 view of one element: a model this size costs nothing
 * until `loadStateDict` or a loader assigns the real storages.
 */
export const placeholderInit: Init = (shape, role, dtype, backend) => {
  const one = full([], role === "norm" ? 1 : 0, { dtype, backend });
  const t = one.expand([...shape]);
  one.dispose();
  return t;
};

/** Normal(0, std) weights from a seeded host stream (HF's initializer_range is 0.02), zero biases, unit norms. */
export function randomInit(rng: { normal(): number }, std = 0.02): Init {
  return (shape, role, dtype, backend) => {
    if (role !== "weight") return full(shape, role === "norm" ? 1 : 0, { dtype, backend });
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = rng.normal() * std;
    return tensor(data, { shape, dtype, backend });
  };
}

/** @internal create a parameter through the options' init. */
export function makeParam(shape: readonly number[], role: ParamRole, opts: ParamOptions): Tensor {
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? "f32";
  const t = (opts.init ?? placeholderInit)(shape, role, dtype, backend);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]) || t.dtype !== dtype) {
    throw new Error(`init returned ${t.describe()}, expected ${dtype}${shapeStr(shape)}`);
  }
  return t;
}
