/**
 * `modules_to_save`: a module trained in full next to the adapters (a classification head, the
 * embeddings). Like PEFT's ModulesToSaveWrapper it keeps the frozen `original_module` and one
 * trainable copy per adapter under `modules_to_save.<adapter>`, and runs the active adapter's
 * copy. Files store the copy under the plain module name (no `modules_to_save.<adapter>` infix).
 */
import { type Tensor, noGrad } from "@lowrank/tensor";
import { Embedding, Linear, Module, RMSNorm } from "@lowrank/nn";
import { AdapterDict } from "./layer.ts";

type ForwardModule = Module & { forward(x: Tensor): Tensor };

export class ModulesToSaveWrapper extends Module {
  readonly original_module: ForwardModule;
  modules_to_save = new AdapterDict<ForwardModule>();
  path: string;
  /** True inside `withAdaptersDisabled`: the original runs. */
  disabled = false;
  #active: string | null = null;

  constructor(original: Module, path = "") {
    super();
    this.original_module = this.registerModule("original_module", original as ForwardModule);
    this.registerModule("modules_to_save", this.modules_to_save);
    this.path = path;
    this.training = original.training;
  }

  /** The weight nn code reads for dtype/backend (`model.embed_tokens.weight`): the original's. */
  get weight(): Tensor {
    return (this.original_module as unknown as { weight: Tensor }).weight;
  }

  get activeAdapter(): string | null {
    return this.#active;
  }

  adapters(): string[] {
    return this.modules_to_save.keys();
  }

  /** Add a trainable copy for `name` (a deep copy of the original's current weights). */
  addAdapter(name: string): void {
    if (this.modules_to_save.has(name)) throw new Error(`${this.path}: modules_to_save already has adapter '${name}'`);
    const copy = cloneModule(this.original_module, this.path) as ForwardModule;
    copy.training = this.training;
    this.modules_to_save.set(name, copy);
    this.original_module.setRequiresGrad(false);
  }

  /** Run the copy of `name` (or the original if `name` has none here); the active copy trains. */
  setAdapter(names: string | readonly string[]): void {
    const list = typeof names === "string" ? [names] : names;
    const mine = list.filter((n) => this.modules_to_save.has(n));
    if (mine.length > 1) throw new Error(`${this.path}: several active adapters (${mine.join(", ")}) have their own copy of this module; only one can run`);
    this.#active = mine[0] ?? null;
    for (const n of this.adapters()) this.modules_to_save.get(n).setRequiresGrad(n === this.#active);
  }

  deleteAdapter(name: string): void {
    if (!this.modules_to_save.has(name)) return;
    this.modules_to_save.get(name).dispose();
    this.modules_to_save = this.registerModule("modules_to_save", new AdapterDict(this.modules_to_save.entries().filter(([k]) => k !== name)));
    if (this.#active === name) this.#active = null;
  }

  /** The module that runs now. */
  current(): ForwardModule {
    return this.disabled || this.#active === null ? this.original_module : this.modules_to_save.get(this.#active);
  }

  forward(x: Tensor): Tensor {
    return this.current().forward(x);
  }
}

/**
 * A deep copy of an nn layer with fresh storages (torch's copy.deepcopy for the layers that can
 * be modules_to_save here). Tied weights are untied in the copy, as in PEFT.
 */
export function cloneModule(m: Module, path: string): Module {
  const fresh = (t: Tensor) => noGrad(() => t.add(0)); // a new dense storage with the same values
  const load = (target: Module, name: string, src: Tensor) => {
    const t = fresh(src);
    (target.tensorAt(name) as Tensor).assign(t);
    t.dispose();
  };
  if (m instanceof Linear) {
    const w = m.weight;
    const out = new Linear(m.inFeatures, m.outFeatures, { weight: fresh(w), bias: m.bias !== null, backend: w.backend, dtype: w.dtype });
    if (m.bias) load(out, "bias", m.bias);
    return out;
  }
  if (m instanceof Embedding) {
    const out = new Embedding(m.numEmbeddings, m.embeddingDim, { backend: m.weight.backend, dtype: m.weight.dtype });
    load(out, "weight", m.weight);
    return out;
  }
  if (m instanceof RMSNorm) {
    const out = new RMSNorm(m.weight.shape[0], { eps: m.eps, backend: m.weight.backend, dtype: m.weight.dtype });
    load(out, "weight", m.weight);
    return out;
  }
  throw new Error(`modules_to_save: ${path} is a ${m.constructor.name}; only Linear, Embedding and RMSNorm layers can be copied and trained in full`);
}
