/** Run the same tensor code on the CPU reference and on WebGPU and compare the results. */
import { type Backend, type DType, type Tensor, scope, tensor, uniformAt } from "@lowrank/tensor";
import { createCpuBackend } from "@lowrank/backend-cpu";

export const cpu = createCpuBackend({ threads: 0 });

/** Deterministic values in [lo, hi). */
export function vals(n: number, seed: number, lo = -1, hi = 1): number[] {
  return Array.from({ length: n }, (_, i) => lo + (hi - lo) * uniformAt(seed, i));
}

export function mk(be: Backend, data: ArrayLike<number>, shape: number[], dtype: DType = "f32"): Tensor {
  return tensor(Array.from(data), { shape, dtype, backend: be });
}

/**
 * Evaluate `f` on both backends and compare elementwise: |a - b| <= atol + rtol * |b|, NaN
 * matching NaN; atol = rtol = 0 demands bit-equal values.
 */
export async function agree(gpu: Backend, what: string, f: (be: Backend) => Tensor, atol = 0, rtol = 0): Promise<void> {
  const [a, b] = await Promise.all(
    [gpu, cpu].map(async (be) => {
      const t = scope(() => f(be));
      try {
        return { shape: [...t.shape], dtype: t.dtype, data: await t.read() };
      } finally {
        t.dispose();
      }
    }),
  );
  if (a.dtype !== b.dtype || a.shape.join() !== b.shape.join()) throw new Error(`${what}: ${a.dtype}[${a.shape}] vs cpu ${b.dtype}[${b.shape}]`);
  for (let i = 0; i < b.data.length; i++) {
    const x = a.data[i];
    const y = b.data[i];
    const ok = Number.isNaN(y) ? Number.isNaN(x) : Object.is(x, y) || x === y || Math.abs(x - y) <= atol + rtol * Math.abs(y);
    if (!ok) throw new Error(`${what}: element ${i} is ${x} on webgpu, ${y} on cpu (atol ${atol}, rtol ${rtol})`);
  }
}
