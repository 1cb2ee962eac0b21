/**
 * Optimizers with torch semantics: AdamW (decoupled weight decay, bias correction, fp32 state)
 * and SGD (optional momentum, coupled weight decay). Updates run under noGrad in a scope and land
 * in the parameters with `assign`, so modules keep the same tensor objects. State is keyed by
 * parameter name, which makes it serializable and independent of object identity.
 */
import { type Tensor, adamwStep, keep, noGrad, scope, tensor, zeros } from "@lowrank/tensor";

export interface NamedParam {
  name: string;
  param: Tensor;
  /** Weight decay applies (matrices; not norms or biases, like HF's Trainer). */
  decay: boolean;
}

/** Serializable optimizer state: scalars plus one fp32 array per state tensor ("<param>.exp_avg", ...). */
export interface OptimizerState {
  type: "adamw" | "sgd";
  step: number;
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

export interface Optimizer {
  readonly type: "adamw" | "sgd";
  readonly params: readonly NamedParam[];
  /** Number of updates applied so far. */
  readonly stepCount: number;
  /** Apply one update from the parameters' .grad at learning rate `lr`. */
  step(lr: number): void;
  zeroGrad(): void;
  state(): Promise<OptimizerState>;
  loadState(s: OptimizerState): void;
  dispose(): void;
}

export interface AdamWOptions {
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** Default decay rule: matrices decay, vectors (norm gains, biases) do not. */
export function namedParams(entries: Iterable<[string, Tensor]>): NamedParam[] {
  return [...entries].map(([name, param]) => ({ name, param, decay: param.rank >= 2 }));
}

abstract class Base {
  stepCount = 0;
  protected slots = new Map<string, Tensor>();
  constructor(readonly params: readonly NamedParam[]) {
    const seen = new Set<string>();
    for (const p of params) {
      if (seen.has(p.name)) throw new Error(`optimizer: parameter name "${p.name}" appears twice`);
      seen.add(p.name);
      if (!p.param.requiresGrad) throw new Error(`optimizer: ${p.name} does not require grad`);
    }
  }

  protected slot(key: string, like: Tensor): Tensor {
    let t = this.slots.get(key);
    if (!t) {
      t = keep(zeros(like.shape, { dtype: "f32", backend: like.backend }));
      this.slots.set(key, t);
    }
    return t;
  }

  zeroGrad(): void {
    for (const p of this.params) p.param.zeroGrad();
  }

  async state(): Promise<OptimizerState> {
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [k, t] of [...this.slots].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      tensors.set(k, { shape: [...t.shape], data: Float32Array.from(await t.read()) });
    }
    return { type: this.type, step: this.stepCount, tensors };
  }

  abstract readonly type: "adamw" | "sgd";

  loadState(s: OptimizerState): void {
    if (s.type !== this.type) throw new Error(`optimizer state is for ${s.type}, this optimizer is ${this.type}`);
    const byName = new Map(this.params.map((p) => [p.name, p.param]));
    for (const [k, v] of s.tensors) {
      const name = k.slice(0, k.lastIndexOf("."));
      const p = byName.get(name);
      if (!p) throw new Error(`optimizer state has "${k}" but no parameter "${name}" is being trained`);
      if (v.shape.length !== p.shape.length || v.shape.some((d, i) => d !== p.shape[i])) {
        throw new Error(`optimizer state "${k}" has shape [${v.shape}] but ${name} is [${p.shape}]`);
      }
    }
    this.dispose();
    for (const [k, v] of s.tensors) {
      const p = byName.get(k.slice(0, k.lastIndexOf("."))) as Tensor;
      this.slots.set(k, keep(tensor(v.data, { shape: v.shape, dtype: "f32", backend: p.backend })));
    }
    this.stepCount = s.step;
  }

  dispose(): void {
    for (const t of this.slots.values()) t.dispose();
    this.slots.clear();
  }

  /** Run `fn(p, g32, p32)` per parameter with a gradient, inside noGrad + scope, and assign the result. */
  protected update(fn: (p: NamedParam, g: Tensor, p32: Tensor) => Tensor): void {
    noGrad(() => {
      for (const p of this.params) {
        const g = p.param.grad;
        if (!g) continue;
        scope(() => {
          const g32 = g.dtype === "f32" ? g : g.cast("f32");
          const p32 = p.param.dtype === "f32" ? p.param : p.param.cast("f32");
          const next = fn(p, g32, p32);
          p.param.assign(next.dtype === p.param.dtype ? next : next.cast(p.param.dtype));
        });
      }
    });
  }
}

/**
 * torch.optim.AdamW: p <- p * (1 - lr*wd); m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
 * p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 */
export class AdamW extends Base implements Optimizer {
  readonly type = "adamw" as const;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;

  constructor(params: readonly NamedParam[], opts: AdamWOptions = {}) {
    super(params);
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
  }

  step(lr: number): void {
    const t = ++this.stepCount;
    const { beta1: b1, beta2: b2, eps, weightDecay: wd } = this;
    const bc1 = 1 - b1 ** t;
    const sqrtBc2 = Math.sqrt(1 - b2 ** t);
    const h = { lr, beta1: b1, beta2: b2, eps, weightDecay: wd, bc1, sqrtBc2 };
    for (const p of this.params) {
      const g = p.param.grad;
      if (!g) continue;
      const m = this.slot(`${p.name}.exp_avg`, p.param);
      const v = this.slot(`${p.name}.exp_avg_sq`, p.param);
      // In place on the backend's fused kernel (no temporaries); primitives otherwise.
      adamwStep(p.param, g, m, v, h, p.decay);
    }
  }
}

export interface SgdOptions {
  momentum?: number;
  weightDecay?: number;
}

/** torch.optim.SGD: g <- g + wd p; buf <- g (first step) or momentum buf + g; p <- p - lr buf. */
export class SGD extends Base implements Optimizer {
  readonly type = "sgd" as const;
  readonly momentum: number;
  readonly weightDecay: number;

  constructor(params: readonly NamedParam[], opts: SgdOptions = {}) {
    super(params);
    this.momentum = opts.momentum ?? 0;
    this.weightDecay = opts.weightDecay ?? 0;
  }

  step(lr: number): void {
    const first = this.stepCount === 0;
    this.stepCount++;
    this.update((p, g0, p32) => {
      let g = this.weightDecay > 0 && p.decay ? g0.add(p32.mul(this.weightDecay)) : g0;
      if (this.momentum > 0) {
        const key = `${p.name}.momentum_buffer`;
        const fresh = first || !this.slots.has(key);
        const buf = this.slot(key, p.param);
        const next = fresh ? g.add(0) : buf.mul(this.momentum).add(g);
        buf.assign(next);
        g = next;
      }
      return p32.sub(g.mul(lr));
    });
  }
}
