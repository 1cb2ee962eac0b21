/**
 * The multi-tensor sum of squares (global gradient norm): equal to the CPU's per-tensor
 * square-sum-add within f32 rounding, over tensors of many sizes, halves and offset views, in
 * ceil(n / 15) + 1 dispatches.
 */
import { test } from "node:test";
import { type Tensor, sumOfSquares, tensor } from "@lowrank/tensor";
import type { WebGpuBackend } from "../src/backend.ts";
import { cpu } from "./helpers-cpu.ts";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;
const gpu = got as WebGpuBackend;

test("sumOfSquares: many tensors (sizes 1..5000, f16, an offset view) equal the CPU composite, in few dispatches", { skip, timeout: TIMEOUT_MS }, async () => {
  const sizes = [1, 3, 64, 1023, 1024, 1025, 5000, 17, 512, 512, 512, 512, 512, 512, 512, 512, 77, 2];
  const data = sizes.map((n, i) => Float32Array.from({ length: n }, (_, k) => Math.sin(0.37 * k + i) * (1 + (i % 3))));
  const make = (be: typeof cpu | WebGpuBackend): Tensor[] =>
    data.map((d, i) => {
      const t = tensor(d, { shape: [d.length], backend: be });
      if (i === 5) return t.cast("f16");
      // An offset view: the tail of a longer tensor.
      if (i === 6) return tensor(new Float32Array([9, 9, ...d]), { shape: [d.length + 2], backend: be }).narrow(0, 2, d.length);
      return t;
    });
  const want = await sumOfSquares(make(cpu)).item();
  const xs = make(gpu);
  await gpu.sync();
  const before = gpu.engine.counters.dispatches;
  const s = sumOfSquares(xs);
  const n = gpu.engine.counters.dispatches - before;
  const slots = Math.min(12, gpu.gpuDevice.limits.maxStorageBuffersPerShaderStage - 1);
  const expected = Math.ceil(sizes.length / slots) + 1;
  if (n !== expected) throw new Error(`sumOfSquares over ${sizes.length} tensors: ${n} dispatches, expected ${expected}`);
  const got = await s.item();
  if (!(Math.abs(got - want) <= 1e-5 * want)) throw new Error(`sumOfSquares: ${got}, expected ${want} (CPU composite)`);
  for (const t of [...xs, s]) t.dispose();
  if (!((await sumOfSquares([tensor([3, 4], { backend: gpu })]).item()) === 25)) throw new Error("sumOfSquares([3, 4]) should be 25");
});
