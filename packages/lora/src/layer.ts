/**
 * `LoraLinear`: a LoRA layer that WRAPS a base linear layer (PEFT's lora.Linear). Per-adapter
 * state lives in maps keyed by adapter name; weights sit in `lora_A.<name>` / `lora_B.<name>`
 * Linear children, so parameter names are PEFT's in-memory names
 * (`...q_proj.lora_A.default.weight`) and the base weight becomes `...q_proj.base_layer.weight`.
 *
 *   y = base(x) + Σ_active  B(A(dropout(x))) · scaling        scaling = alpha / r (or / √r)
 *
 * DoRA adapters add a learned magnitude per output row (see dora forward below).
 */
import {
  type CounterStream,
  type DType,
  type DropoutParams,
  type Tensor,
  Rng,
  addLoraRows,
  concat,
  drawCounter,
  dropout,
  hash32,
  keep,
  loraBranch,
  loraLinear,
  loraRows,
  noGrad,
  scope,
  tensor,
} from "@lowrank/tensor";
import { Linear, Module } from "@lowrank/nn";
import { type BaseLayer, baseBackend, baseBias, denseWeightF32, isRequantizable } from "./base-layer.ts";

export interface AdapterOptions {
  r: number;
  alpha: number;
  dropout: number;
  useRslora: boolean;
  useDora: boolean;
  /** true: kaiming-uniform A, zero B; "gaussian": A ~ N(0, (1/r)²), zero B; false: both random; "zeros": both zero (for loading). */
  init: boolean | "gaussian" | "zeros";
  /** Seed of this adapter's init stream and dropout masks (u32). */
  seed: number;
}

export interface MergeOptions {
  /** Merge into a copy first and reject non-finite results, naming the module (PEFT safe_merge). */
  safe?: boolean;
  /** Adapters to merge (default: the active ones). */
  adapterNames?: string[];
}

/** What a merge did to one layer; `requantError` only for quantized bases (max |W_merged - dequant(requant(W_merged))|). */
export interface MergeInfo {
  module: string;
  adapter: string;
  requantError?: number;
}

/** An ordered name -> module map registered as a child, like torch.nn.ModuleDict. */
export class AdapterDict<M extends Module = Module> extends Module {
  readonly #items = new Map<string, M>();
  constructor(items: Iterable<[string, M]> = []) {
    super();
    for (const [k, m] of items) this.set(k, m);
  }
  set(name: string, m: M): void {
    this.registerModule(name, m);
    this.#items.set(name, m);
  }
  get(name: string): M {
    const m = this.#items.get(name);
    if (!m) throw new Error(`no adapter '${name}' here (adapters: ${[...this.#items.keys()].join(", ") || "none"})`);
    return m;
  }
  has(name: string): boolean {
    return this.#items.has(name);
  }
  keys(): string[] {
    return [...this.#items.keys()];
  }
  entries(): [string, M][] {
    return [...this.#items];
  }
}

/** Adapters stacked for row-batched serving: A [Σr, in], B [out, Σr], each adapter's block start; `key` names the set. */
interface RowFactors {
  key: string;
  A: Tensor;
  B: Tensor;
  start: Map<string, number>;
  width: number;
}

/** DoRA's per-output-row magnitude, a module so its parameter is named `lora_magnitude_vector.<name>.weight` as in PEFT. */
export class MagnitudeVector extends Module {
  readonly weight: Tensor;
  constructor(weight: Tensor) {
    super();
    this.weight = this.registerParameter("weight", weight);
  }
}

export class LoraLinear extends Module {
  base_layer: BaseLayer;
  lora_A = new AdapterDict<Linear>();
  lora_B = new AdapterDict<Linear>();
  lora_magnitude_vector = new AdapterDict<MagnitudeVector>();
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly r = new Map<string, number>();
  readonly loraAlpha = new Map<string, number>();
  readonly scaling = new Map<string, number>();
  readonly loraDropout = new Map<string, number>();
  readonly useDora = new Map<string, boolean>();
  /** Adapters folded into the base weight, in merge order (unmerge pops). */
  readonly mergedAdapters: string[] = [];
  /** Dropout stream per adapter: the seed and the next counter, so a resumed run continues the same masks. */
  readonly dropoutState = new Map<string, CounterStream>();
  /** True inside `withAdaptersDisabled`: the base alone runs. */
  disabled = false;
  /** Dotted path in the model, for messages. */
  path: string;
  /** Set when the base weight is shared with another parameter (tied embeddings): merging would change both. */
  tiedWith: string | null = null;
  #active: string[] = [];
  readonly #weightNorms = new Map<string, Tensor>();
  /** Set by PeftModel.setRowAdapters: the adapter of each input row (null: the base alone), for batched serving. */
  rowAdapters: readonly (string | null)[] | null = null;
  /** This layer's adapters of the row assignment stacked in name order (A [Σr, in], B [out, Σr]), and where each block starts. */
  #factors: RowFactors | null = null;
  /** The per-row scaling mask [N, Σr] of the last row assignment. */
  #rowMask: { rows: readonly (string | null)[]; mask: Tensor } | null = null;

  constructor(base: BaseLayer, path = "") {
    super();
    this.base_layer = this.registerModule("base_layer", base);
    this.registerModule("lora_A", this.lora_A);
    this.registerModule("lora_B", this.lora_B);
    this.registerModule("lora_magnitude_vector", this.lora_magnitude_vector);
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    this.path = path;
    this.training = base.training;
  }

  get activeAdapters(): readonly string[] {
    return this.#active;
  }

  get merged(): boolean {
    return this.mergedAdapters.length > 0;
  }

  adapters(): string[] {
    return [...this.r.keys()];
  }

  /** Create adapter `name` (PEFT update_layer). Its weights are f32 on the base's backend. */
  addAdapter(name: string, o: AdapterOptions): void {
    if (this.r.has(name)) throw new Error(`${this.path}: adapter '${name}' already exists`);
    this.releaseRowStack();
    const maxR = Math.min(this.inFeatures, this.outFeatures);
    if (!(Number.isSafeInteger(o.r) && o.r > 0 && o.r <= maxR)) {
      throw new RangeError(
        `${this.path}: r = ${o.r} must be an integer in [1, ${maxR}] (min(in_features ${this.inFeatures}, out_features ${this.outFeatures}))`,
      );
    }
    const backend = baseBackend(this.base_layer);
    const { a, b } = initialWeights(o, this.inFeatures, this.outFeatures);
    const A = tensor(a, { shape: [o.r, this.inFeatures], backend });
    const B = tensor(b, { shape: [this.outFeatures, o.r], backend });
    this.lora_A.set(name, new Linear(this.inFeatures, o.r, { weight: A }));
    this.lora_B.set(name, new Linear(o.r, this.outFeatures, { weight: B }));
    this.r.set(name, o.r);
    this.loraAlpha.set(name, o.alpha);
    this.scaling.set(name, o.useRslora ? o.alpha / Math.sqrt(o.r) : o.alpha / o.r);
    this.loraDropout.set(name, o.dropout);
    this.useDora.set(name, o.useDora);
    this.dropoutState.set(name, { seed: hash32(o.seed ^ 0x5bd1e995), counter: 0 });
    if (o.useDora) {
      // m starts as ||W + s·B·A|| per output row, so a fresh DoRA adapter is a no-op too.
      const m = scope(() => rowNorm(this.#combinedWeight(name)).contiguous());
      keep(m);
      this.lora_magnitude_vector.set(name, new MagnitudeVector(m));
    }
    for (const m of [this.lora_A.get(name), this.lora_B.get(name)]) m.training = this.training;
  }

  /** Activate adapters (PEFT set_adapter): the active ones train, the others are frozen. */
  setAdapter(names: string | readonly string[]): void {
    const list = typeof names === "string" ? [names] : [...names];
    for (const n of list) if (!this.r.has(n)) throw new Error(`${this.path}: no adapter '${n}' (adapters: ${this.adapters().join(", ")})`);
    this.#active = list.filter((n) => this.r.has(n));
    for (const n of this.adapters()) this.setTrainable(n, this.#active.includes(n));
  }

  /** Activate the given adapters that exist in this layer; other names are skipped (a layer another adapter does not target). */
  setActiveAdapters(names: readonly string[]): void {
    this.#active = names.filter((n) => this.r.has(n));
  }

  setTrainable(name: string, on: boolean): void {
    for (const t of this.adapterParameters(name)) t.setRequiresGrad(on);
  }

  /** lora_A, lora_B (and the DoRA magnitude) of one adapter. */
  adapterParameters(name: string): Tensor[] {
    if (!this.r.has(name)) return [];
    const out = [this.lora_A.get(name).weight, this.lora_B.get(name).weight];
    if (this.lora_magnitude_vector.has(name)) out.push(this.lora_magnitude_vector.get(name).weight);
    return out;
  }

  /** Remove an adapter and free its weights. */
  deleteAdapter(name: string): void {
    if (!this.r.has(name)) return;
    if (this.mergedAdapters.includes(name)) throw new Error(`${this.path}: adapter '${name}' is merged into the base weight; unmerge before deleting it`);
    this.releaseRowStack();
    for (const t of this.adapterParameters(name)) t.dispose();
    // Module has no way to unregister a child, so the dicts are rebuilt without it.
    const rebuild = <M extends Module>(d: AdapterDict<M>, field: string): AdapterDict<M> =>
      this.registerModule(field, new AdapterDict(d.entries().filter(([k]) => k !== name)));
    this.lora_A = rebuild(this.lora_A, "lora_A");
    this.lora_B = rebuild(this.lora_B, "lora_B");
    this.lora_magnitude_vector = rebuild(this.lora_magnitude_vector, "lora_magnitude_vector");
    for (const m of [this.r, this.loraAlpha, this.scaling, this.loraDropout, this.useDora, this.dropoutState]) m.delete(name);
    this.#weightNorms.get(name)?.dispose();
    this.#weightNorms.delete(name);
    this.#active = this.#active.filter((n) => n !== name);
  }

  /** ΔW = (B·A)·scaling, [out, in] f32 (PEFT get_delta_weight). No gradient. */
  deltaWeight(name: string): Tensor {
    const A = this.lora_A.get(name).weight;
    const B = this.lora_B.get(name).weight;
    const s = this.scaling.get(name) as number;
    return noGrad(() => scope(() => B.matmul(A).mul(s)));
  }

  forward(x: Tensor): Tensor {
    if (this.disabled) {
      if (this.merged)
        throw new Error(`${this.path}: adapters ${this.mergedAdapters.join(", ")} are merged into the base weight; unmerge() before disabling adapters`);
      return this.base_layer.forward(x);
    }
    // Merged adapters already live in the base weight (PEFT ignores the unmerged ones then too).
    if (this.rowAdapters && !this.merged) return this.#forwardRows(x, this.rowAdapters);
    if (this.merged || this.#active.length === 0) return this.base_layer.forward(x);
    return scope(() => {
      const lead = x.shape.slice(0, -1);
      const fused = this.#fusedLayer(x);
      if (fused) return fused.reshape([...lead, this.outFeatures]);
      const base = this.base_layer.forward(x); // (..., out)
      let result = base;
      for (const name of this.#active) {
        let A = this.lora_A.get(name).weight; // (r, in)
        let B = this.lora_B.get(name).weight; // (out, r)
        const s = this.scaling.get(name) as number;
        // Mixed precision (a half-precision base and activations, f32 adapters): the branch runs in
        // the activations' dtype with the small A and B cast to it, as under torch autocast, so it
        // saves the input the base layer keeps anyway instead of an f32 copy per adapter. DoRA's
        // weight-norm path stays in the adapters' f32 (x is cast to it, as before).
        const mixed = (x.dtype === "f16" || x.dtype === "bf16") && A.dtype === "f32" && !this.useDora.get(name);
        if (mixed) [A, B] = [A.cast(x.dtype), B.cast(x.dtype)];
        const xa = (x.dtype === A.dtype ? x : x.cast(A.dtype)).reshape([-1, this.inFeatures]); // (N, in)
        const drop = this.#nextDropout(name, xa.size);
        const dropped = drop !== null;
        let delta: Tensor;
        if (this.useDora.get(name)) {
          const xd = drop ? dropout(xa, drop.p, drop.seed, drop.offset) : xa;
          const h = xd.matmul(A.T).matmul(B.T); // (N, out)
          const baseNoBias = dropped ? null : subBias(base.reshape([-1, this.outFeatures]).cast(h.dtype), baseBias(this.base_layer));
          delta = this.#doraDelta(name, xd, h, baseNoBias);
        } else {
          // One node that keeps only A·x: the dropped input is regenerated in backward.
          delta = loraBranch(xa, A, B, s, drop); // (N, out)
        }
        delta = delta.reshape([...lead, this.outFeatures]);
        result = result.add(delta.dtype === result.dtype ? delta : delta.cast(result.dtype));
      }
      return result;
    });
  }

  /**
   * Rows with different adapters in one batch (S-LoRA/Punica serving): the base over every row, then
   * every adapter's branch at once through their stacked factors: h = x·[A₁; A₂; …]ᵀ, each row
   * masked to its own adapter's block and scaled by its scaling (other blocks 0), then h·[B₁ B₂ …]ᵀ.
   * Four ops whatever the number of adapters; the row's own terms are those of its adapter alone
   * (the zeros add nothing). The factors are stacked again when the set of adapters changes (or one is
   * added or deleted), the mask when the row assignment does. Inference only.
   */
  #forwardRows(x: Tensor, rows: readonly (string | null)[]): Tensor {
    return scope(() => {
      const lead = x.shape.slice(0, -1);
      const x2 = x.reshape([-1, this.inFeatures]); // (N, in)
      const N = x2.shape[0];
      if (rows.length !== N) throw new RangeError(`${this.path}: ${rows.length} row adapters for ${N} rows`);
      const stack = this.#stackFor(rows);
      const base = this.base_layer;
      if (stack && base instanceof Linear) return loraRows(x2, base.weight, base.bias, stack.A, stack.B, stack.mask).reshape([...lead, this.outFeatures]);
      const y = base.forward(x).reshape([N, this.outFeatures]);
      return (stack ? addLoraRows(y, x2, stack.A, stack.B, stack.mask) : y).reshape([...lead, this.outFeatures]);
    });
  }

  #stackFor(rows: readonly (string | null)[]): { A: Tensor; B: Tensor; mask: Tensor } | null {
    const f0 = this.#factors;
    if (f0 && this.#rowMask?.rows === rows) return { A: f0.A, B: f0.B, mask: this.#rowMask.mask };
    this.#rowMask?.mask.dispose();
    this.#rowMask = null;
    // Sorted, so sequences joining and leaving the batch keep the stack while its adapters stay the same.
    const mine = [...new Set(rows)].filter((n): n is string => n !== null && this.lora_A.has(n)).sort();
    if (!mine.length) return null;
    const key = mine.join("\u0000");
    if (f0?.key !== key) {
      this.releaseRowStack();
      const ranks = mine.map((n) => this.r.get(n) as number);
      const start = new Map(mine.map((n, i) => [n, ranks.slice(0, i).reduce((a, b) => a + b, 0)]));
      this.#factors = noGrad(() => ({
        key,
        start,
        width: ranks.reduce((a, b) => a + b, 0),
        A: keep(
          mine.length === 1
            ? this.lora_A.get(mine[0]).weight.contiguous()
            : concat(
                mine.map((n) => this.lora_A.get(n).weight),
                0,
              ),
        ),
        B: keep(
          mine.length === 1
            ? this.lora_B.get(mine[0]).weight.contiguous()
            : concat(
                mine.map((n) => this.lora_B.get(n).weight),
                1,
              ),
        ),
      }));
    }
    const f = this.#factors as RowFactors;
    const mask = new Float32Array(rows.length * f.width);
    rows.forEach((n, i) => {
      const s = n === null ? undefined : f.start.get(n);
      if (s !== undefined) mask.fill(this.scaling.get(n as string) as number, i * f.width + s, i * f.width + s + (this.r.get(n as string) as number));
    });
    const t = noGrad(() => keep(tensor(mask, { shape: [rows.length, f.width], backend: f.A.backend, dtype: f.A.dtype })));
    this.#rowMask = { rows, mask: t };
    return { A: f.A, B: f.B, mask: t };
  }

  /** Free the stacked factors and the mask (row adapters ended, or an adapter added or deleted). */
  releaseRowStack(): void {
    for (const t of [this.#factors?.A, this.#factors?.B, this.#rowMask?.mask]) t?.dispose();
    this.#factors = null;
    this.#rowMask = null;
  }

  /** This step's dropout of adapter `name` over `size` input elements (advancing its stream), or null. */
  #nextDropout(name: string, size: number): DropoutParams | null {
    const p = this.loraDropout.get(name) as number;
    if (!(p > 0 && this.training)) return null;
    const st = this.dropoutState.get(name) as CounterStream;
    // Through tensor's drawCounter, so recompute() replays these draws in its second forward.
    return { p, seed: st.seed, offset: drawCounter(st, size) };
  }

  /**
   * The common case as one fused layer (tensor's loraLinear): one active plain LoRA adapter on a
   * dense f32 base. Base and branch then share their matmuls' outputs (four fewer kernels forward,
   * five backward on WebGPU). Null when the layer takes the general path.
   */
  #fusedLayer(x: Tensor): Tensor | null {
    const base = this.base_layer;
    if (this.#active.length !== 1 || !(base instanceof Linear) || x.dtype !== "f32" || base.weight.dtype !== "f32") return null;
    const name = this.#active[0];
    const A = this.lora_A.get(name).weight;
    const B = this.lora_B.get(name).weight;
    if (this.useDora.get(name) || A.dtype !== "f32" || B.dtype !== "f32") return null;
    const x2 = x.reshape([-1, this.inFeatures]);
    return loraLinear(x2, base.weight, base.bias, A, B, this.scaling.get(name) as number, this.#nextDropout(name, x2.size));
  }

  /**
   * DoRA (PEFT variants.py DoraLinearVariant / dora.py): with W' = W + s·B·A and its row norm
   * ‖W'‖ (detached), out += (m/‖W'‖ − 1)·(x Wᵀ) + (m/‖W'‖)·s·B·A·x. Without dropout x Wᵀ is the base
   * output minus its bias; with dropout it is recomputed from the dropped input.
   */
  #doraDelta(name: string, xd: Tensor, h: Tensor, baseNoBias: Tensor | null): Tensor {
    const m = this.lora_magnitude_vector.get(name).weight; // (out)
    const s = this.scaling.get(name) as number;
    const W = denseWeightF32(this.base_layer); // (out, in)
    const norm = noGrad(() => rowNorm(this.#combinedWeight(name, W))); // (out)
    const scale = m.div(norm); // (out), gradient flows to m only
    const baseOut = baseNoBias ?? xd.matmul(W.T); // (N, out)
    return scale.sub(1).mul(baseOut).add(scale.mul(h).mul(s));
  }

  /** W + s·B·A in f32 (W dequantized for 4-bit bases). */
  #combinedWeight(name: string, W?: Tensor): Tensor {
    return noGrad(() => scope(() => (W ?? denseWeightF32(this.base_layer)).add(this.deltaWeight(name))));
  }

  /**
   * Replace a quantized base by a dense Linear holding dequant(W) (in `dtype`), bias kept: the
   * "merge into dequant(W4), keep 16-bit" path, exactly the weights the adapter was trained against.
   */
  densify(dtype: DType = "f32"): void {
    const base = this.base_layer;
    if (base instanceof Linear) return;
    if (this.merged) throw new Error(`${this.path}: unmerge() before replacing the quantized base`);
    const W = noGrad(() => base.dequantize(dtype));
    const lin = new Linear(this.inFeatures, this.outFeatures, { weight: W, bias: !!base.bias, backend: W.backend, dtype });
    if (base.bias) {
      const b = noGrad(() => (base.bias as Tensor).cast(dtype).contiguous());
      (lin.tensorAt("bias") as Tensor).assign(b);
      b.dispose();
    }
    lin.training = base.training;
    this.base_layer = this.registerModule("base_layer", lin);
    base.dispose();
  }

  // ---------------------------------------------------------------- merge / unmerge

  /**
   * Fold adapters into the base weight (PEFT merge). Dense: W += ΔW (DoRA: W ← m/‖W+ΔW‖·(W+ΔW)).
   * Quantized base: dequantize, add, requantize with the base's own settings; the round-trip error
   * is reported. `safe` checks the result for NaN/Inf before anything is written.
   */
  async merge(opts: MergeOptions = {}): Promise<MergeInfo[]> {
    if (this.tiedWith)
      throw new Error(`${this.path}: cannot merge: its weight is tied to ${this.tiedWith}, so merging would change both; untie it or target another module`);
    const names = this.#toMerge(opts.adapterNames);
    if (opts.safe) await this.checkMerge(names);
    const out: MergeInfo[] = [];
    for (const name of names) {
      const merged = this.#mergedWeight(name, true);
      try {
        out.push({ module: this.path, adapter: name, ...(await this.#writeWeight(merged)) });
      } finally {
        merged.dispose();
      }
      this.mergedAdapters.push(name);
    }
    return out;
  }

  /** Compute the merged weights without writing them; throws if any is NaN/Inf (the check behind `safe`). */
  async checkMerge(adapterNames?: string[]): Promise<void> {
    for (const name of this.#toMerge(adapterNames)) {
      const merged = this.#mergedWeight(name, false);
      try {
        if (!(await allFinite(merged)))
          throw new Error(`${this.path}: merging adapter '${name}' gives NaN or Inf in the weight; the adapter is broken (nothing was changed)`);
      } finally {
        merged.dispose();
      }
    }
  }

  #toMerge(adapterNames?: string[]): string[] {
    return (adapterNames ?? this.#active).filter((n) => this.r.has(n) && !this.mergedAdapters.includes(n));
  }

  /** W + ΔW, or for DoRA m/‖W+ΔW‖·(W+ΔW) (caching ‖W+ΔW‖ for unmerge when `cache`). */
  #mergedWeight(name: string, cache: boolean): Tensor {
    return noGrad(() =>
      scope(() => {
        const sum = denseWeightF32(this.base_layer).add(this.deltaWeight(name));
        if (!this.useDora.get(name)) return sum;
        const norm = rowNorm(sum);
        const factor = this.lora_magnitude_vector.get(name).weight.div(norm);
        if (cache) {
          this.#weightNorms.get(name)?.dispose();
          this.#weightNorms.set(name, keep(norm));
        }
        return sum.mul(factor.reshape([-1, 1]));
      }),
    );
  }

  /** Undo merges in reverse order (PEFT unmerge), all of them or the last `count`. For 4-bit bases this requantizes again. */
  async unmerge(count = Infinity): Promise<MergeInfo[]> {
    const out: MergeInfo[] = [];
    while (this.mergedAdapters.length && out.length < count) {
      const name = this.mergedAdapters[this.mergedAdapters.length - 1];
      const restored = noGrad(() =>
        scope(() => {
          const W = denseWeightF32(this.base_layer);
          const unscaled = this.useDora.get(name) ? W.div(this.#doraFactor(name).reshape([-1, 1])) : W;
          return unscaled.sub(this.deltaWeight(name));
        }),
      );
      try {
        out.push({ module: this.path, adapter: name, ...(await this.#writeWeight(restored)) });
      } finally {
        restored.dispose();
      }
      this.mergedAdapters.pop();
      this.#weightNorms.get(name)?.dispose();
      this.#weightNorms.delete(name);
    }
    return out;
  }

  /** m / ‖W + ΔW‖ from the norm cached at merge time. */
  #doraFactor(name: string): Tensor {
    const norm = this.#weightNorms.get(name);
    if (!norm) throw new Error(`${this.path}: DoRA adapter '${name}' has no cached weight norm (was it merged by this layer?)`);
    return this.lora_magnitude_vector.get(name).weight.div(norm);
  }

  async #writeWeight(W: Tensor): Promise<{ requantError?: number }> {
    const base = this.base_layer;
    if (base instanceof Linear) {
      const t = noGrad(() => (base.weight.dtype === "f32" ? W.contiguous() : W.cast(base.weight.dtype)));
      base.weight.assign(t);
      t.dispose();
      return {};
    }
    if (!isRequantizable(base)) {
      throw new Error(`${this.path}: the quantized base layer has no requantize(weight) method, so adapters cannot be merged into it`);
    }
    await base.requantize(W);
    const err = scope(() => denseWeightF32(base).sub(W).abs().max());
    const requantError = (await err.read())[0];
    err.dispose();
    return { requantError };
  }
}

/** Random initial A [r, in] and B [out, r] on the host (PEFT reset_lora_parameters). */
export function initialWeights(o: AdapterOptions, inF: number, outF: number): { a: Float32Array; b: Float32Array } {
  const rng = new Rng(o.seed >>> 0);
  const a = new Float32Array(o.r * inF);
  const b = new Float32Array(outF * o.r);
  if (o.init === "zeros") return { a, b };
  if (o.init === "gaussian") {
    for (let i = 0; i < a.length; i++) a[i] = rng.normal() / o.r; // std = 1/r, as PEFT's normal_(std=1/r)
    return { a, b };
  }
  // kaiming_uniform_(a=√5) on [fan_out, fan_in] is U(−1/√fan_in, 1/√fan_in): nn.Linear's default.
  const bound = 1 / Math.sqrt(inF);
  for (let i = 0; i < a.length; i++) a[i] = (rng.next() * 2 - 1) * bound;
  if (o.init === false) {
    const boundB = 1 / Math.sqrt(o.r);
    for (let i = 0; i < b.length; i++) b[i] = (rng.next() * 2 - 1) * boundB;
  }
  return { a, b };
}

/** ‖row‖₂ of a [out, in] matrix -> [out]. */
function rowNorm(w: Tensor): Tensor {
  return scope(() => w.square().sum(1).sqrt());
}

function subBias(y: Tensor, bias: Tensor | null): Tensor {
  if (!bias) return y;
  return y.sub(bias.dtype === y.dtype ? bias : bias.cast(y.dtype));
}

/** True when every element is finite: x - x is 0 for finite values and NaN otherwise, so one sum tells. */
export async function allFinite(x: Tensor): Promise<boolean> {
  const s = noGrad(() => scope(() => x.sub(x).sum()));
  try {
    return Number.isFinite((await s.read())[0]);
  } finally {
    s.dispose();
  }
}

/**
 * Every LoRA dropout stream in a module tree, by "<module path>:<adapter>": the random state a
 * training checkpoint saves and a resumed run restores.
 */
export function dropoutStreamMap(root: Module): Map<string, CounterStream> {
  const out = new Map<string, CounterStream>();
  for (const [path, m] of root.namedModules()) {
    if (!(m instanceof LoraLinear)) continue;
    for (const [name, st] of m.dropoutState) out.set(`${path}:${name}`, st);
  }
  return out;
}
