import type { Backend } from "../backend.ts";
import type { DType } from "../dtype.ts";
import { uniformAt } from "../random.ts";
import type { Tensor } from "../tensor.ts";
import { tensor } from "../tensor.ts";
import type { Host } from "./oracle.ts";

export type TestFn = (name: string, fn: () => Promise<void> | void) => void;

export interface SuiteOptions {
  backend: Backend;
  /** The test registrar of the runner (node:test's `test`, Deno.test adapter, ...). */
  test: TestFn;
  /** Multiplies the forward tolerances (e.g. for less precise transcendental functions). */
  tolScale?: number;
}

/** Deterministic uniform data in [lo, hi). */
export function rnd(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => lo + (hi - lo) * uniformAt(seed, i));
}

/** Values whose pairwise gaps exceed `gap` (for max/abs/relu gradchecks away from kinks). */
export function spread(n: number, seed: number, gap = 0.05): Float32Array {
  const perm = Array.from({ length: n }, (_, i) => i).sort((a, b) => uniformAt(seed, a) - uniformAt(seed, b));
  return Float32Array.from(perm, (p) => (p - n / 2 + 0.5) * gap * 2);
}

export function mk(backend: Backend) {
  return (data: ArrayLike<number>, shape: number[], dtype: DType = "f32"): Tensor => tensor(Array.from(data), { shape, dtype, backend });
}

/** Assert a tensor equals a host reference within atol + rtol*|ref|; NaN must match NaN. */
export async function expectClose(t: Tensor, ref: Host | number[], what: string, atol = 1e-5, rtol = 1e-5): Promise<void> {
  const r = Array.isArray(ref) ? { data: ref, shape: [...t.shape] } : ref;
  if (t.shape.length !== r.shape.length || t.shape.some((d, i) => d !== r.shape[i])) {
    throw new Error(`${what}: shape [${t.shape}] != expected [${r.shape}]`);
  }
  const got = await t.read();
  for (let i = 0; i < r.data.length; i++) {
    const a = got[i];
    const b = r.data[i];
    if (Number.isNaN(b) ? !Number.isNaN(a) : !(a === b || Math.abs(a - b) <= atol + rtol * Math.abs(b))) {
      throw new Error(`${what}: element ${i} is ${a}, expected ${b} (atol ${atol}, rtol ${rtol})`);
    }
  }
}

/** The same backend with its fused kernels hidden, so composites take the primitive path. */
export function withoutFused(backend: Backend): Backend {
  return new Proxy(backend, {
    get(target, prop) {
      if (prop === "fused") return undefined;
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}
