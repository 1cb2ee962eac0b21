import type { Backend } from "../backend.ts";
import { noGrad } from "../autograd.ts";
import { Rng } from "../random.ts";
import { scope } from "../scope.ts";
import { type Tensor, tensor } from "../tensor.ts";

/** Op names seen in graphs checked by gradcheck (the coverage test compares this with gradRules). */
export const coveredOps = new Set<string>();

function collectOps(root: Tensor): void {
  const stack = [root];
  const seen = new Set<Tensor>();
  while (stack.length) {
    const t = stack.pop()!;
    if (seen.has(t)) continue;
    seen.add(t);
    if (t._node) {
      coveredOps.add(t._node.op);
      stack.push(...t._node.inputs);
    }
  }
}

export interface GradcheckOptions {
  eps?: number;
  atol?: number;
  rtol?: number;
  seed?: number;
  /** Indices of inputs not to differentiate (integer indices, masks). */
  constant?: number[];
}

export interface GradcheckResult {
  ok: boolean;
  maxAbsErr: number;
  /** Description of the worst element. */
  worst: string;
}

/**
 * Compare autograd gradients of `fn` with central finite differences. The output is projected on a
 * fixed random vector so every output element matters. Inputs are given as host data and are
 * re-created for each evaluation (f32; differences are taken in f64 on the host).
 */
export async function gradcheck(
  backend: Backend,
  fn: (...xs: Tensor[]) => Tensor,
  inputs: { data: Float32Array | Int32Array | Uint8Array; shape: number[]; dtype?: "f32" | "i32" | "u8" }[],
  opts: GradcheckOptions = {},
): Promise<GradcheckResult> {
  const eps = opts.eps ?? 1e-3;
  const atol = opts.atol ?? 2e-3;
  const rtol = opts.rtol ?? 2e-2;
  const constant = new Set(opts.constant ?? []);
  inputs.forEach((inp, i) => {
    if ((inp.dtype ?? "f32") !== "f32") constant.add(i);
  });
  const make = (values: (Float32Array | Int32Array | Uint8Array)[], grad: boolean) =>
    inputs.map((inp, i) => tensor(values[i], { shape: inp.shape, dtype: inp.dtype ?? "f32", backend, requiresGrad: grad && !constant.has(i) }));
  const base = inputs.map((i) => i.data);

  // Projection weights, from the first output's shape.
  let weights: Float32Array | null = null;
  const rng = new Rng(opts.seed ?? 7);
  const project = (y: Tensor): Tensor => {
    if (!weights) weights = Float32Array.from({ length: y.size }, () => rng.next() * 2 - 1);
    return y.mul(tensor(weights, { shape: [...y.shape], backend })).sum();
  };
  const evalLoss = async (values: (Float32Array | Int32Array | Uint8Array)[]): Promise<number> => {
    const l = scope(() => noGrad(() => project(fn(...make(values, false)))));
    try {
      return (await l.read())[0];
    } finally {
      l.dispose();
    }
  };

  // Analytic.
  const grads = scope(() => {
    const xs = make(base, true);
    const loss = project(fn(...xs));
    if (!loss.requiresGrad) throw new Error("gradcheck: output does not depend on any differentiable input");
    collectOps(loss);
    loss.backward();
    return xs.map((x) => x.grad);
  });
  const analytic: (Float64Array | null)[] = [];
  for (const g of grads) {
    analytic.push(g ? Float64Array.from(await g.read()) : null);
    g?.dispose();
  }

  let maxAbsErr = 0;
  let worst = "";
  let ok = true;
  for (let i = 0; i < inputs.length; i++) {
    const inp = inputs[i];
    if (constant.has(i)) continue;
    const a = analytic[i] ?? new Float64Array(inp.data.length);
    for (let k = 0; k < inp.data.length; k++) {
      const plus = base.slice();
      const minus = base.slice();
      const p = Float32Array.from(inp.data as Float32Array);
      const m = Float32Array.from(inp.data as Float32Array);
      p[k] += eps;
      m[k] -= eps;
      plus[i] = p;
      minus[i] = m;
      const numeric = ((await evalLoss(plus)) - (await evalLoss(minus))) / (Math.fround(inp.data[k] + eps) - Math.fround(inp.data[k] - eps));
      const err = Math.abs(numeric - a[k]);
      if (err > maxAbsErr) {
        maxAbsErr = err;
        worst = `input ${i} element ${k}: analytic ${a[k]}, numeric ${numeric}`;
      }
      if (err > atol + rtol * Math.abs(numeric)) ok = false;
    }
  }
  return { ok, maxAbsErr, worst };
}
