/**
 * Engine behaviour: buffer pool reuse and memory accounting, upload ordering against unsubmitted
 * work, dispatches folded past 65535 workgroups, typed errors (kernel flags, validation, device
 * loss, use after dispose).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { crossEntropy, full, gather, scope, tensor } from "@lowrank/tensor";
import type { WebGpuBackend } from "../src/backend.ts";
import { WebGpuDeviceLostError, WebGpuDisposedError, WebGpuKernelError, WebGpuValidationError } from "../src/errors.ts";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";

const got = await acquireBackend();
const skip = typeof got === "string" ? got : false;
const be = got as WebGpuBackend;

test("the pool reuses freed buffers; live bytes return to the baseline; pooled bytes are reported apart", { skip, timeout: TIMEOUT_MS }, async () => {
  const base = be.memory();
  const round = () => scope(() => tensor(new Float32Array(5000).fill(1), { backend: be }).exp().add(1).mul(2).sum()).dispose();
  round();
  await be.sync();
  const warm = be.memory().allocatedBytes;
  for (let i = 0; i < 50; i++) round();
  await be.sync();
  const end = be.memory();
  assert.equal(end.liveBytes, base.liveBytes, "live bytes did not return to the baseline");
  assert.equal(end.liveBuffers, base.liveBuffers);
  assert.ok(end.pooledBytes > 0 && end.pooledBuffers > 0, "freed buffers were not pooled");
  assert.ok(end.allocatedBytes <= warm, `pool did not reuse buffers: ${warm} -> ${end.allocatedBytes} bytes allocated`);
  assert.ok(end.peakBytes >= base.liveBytes + 20000, "peak did not record the 20 kB tensor");
  be.trimPool();
  assert.equal(be.memory().pooledBytes, 0);
});

test("an upload never overtakes unsubmitted kernels that read a recycled buffer", { skip, timeout: TIMEOUT_MS }, async () => {
  const a = tensor(new Float32Array(1024).fill(2), { backend: be });
  const y = a.mul(3); // queued, reads a's buffer
  a.dispose(); // a's buffer returns to the pool while y's kernel is still unsubmitted
  const b = tensor(new Float32Array(1024).fill(100), { backend: be });
  const c = tensor(new Float32Array(1024).fill(7), { backend: be });
  const [yv, bv, cv] = [await y.read(), await b.read(), await c.read()];
  assert.ok(
    yv.every((v) => v === 6),
    `kernel read overwritten input: ${yv[0]}`,
  );
  assert.ok(bv.every((v) => v === 100) && cv.every((v) => v === 7));
  for (const t of [y, b, c]) t.dispose();
});

test("dispatches beyond 65535 workgroups are folded into 2-D", { skip, timeout: TIMEOUT_MS }, async () => {
  const n = 70000 * 64 + 5;
  const before = be.engine.counters.dispatches;
  const x = full([n], 1, { backend: be });
  const y = x.add(2);
  const tail = await y
    .narrow(0, n - 3, 3)
    .contiguous()
    .read();
  assert.deepEqual(Array.from(tail), [3, 3, 3]);
  const s = await y.sum().item();
  assert.equal(s, 3 * n);
  // The add (4.5M elements, 2-D grid) and the sum; full() is deferred and the add reads it from its parameters.
  const n2 = be.engine.counters.dispatches - before;
  assert.ok(n2 >= 2, `expected at least 2 dispatches (add, sum), got ${n2}`);
  x.dispose();
  y.dispose();
});

test(
  "full() is deferred: elementwise ops read it from their parameters; any other use fills it first, and a written one is never inlined",
  { skip, timeout: TIMEOUT_MS },
  async () => {
    const x = tensor(
      Float32Array.from({ length: 100 }, (_, i) => i),
      { backend: be },
    );
    const d0 = be.engine.counters.dispatches;
    const y = x.mul(0.5).add(full([100], 3, { backend: be }));
    assert.equal(be.engine.counters.dispatches - d0, 2, "x * 0.5 + 3 should be two dispatches (no fill for the constants)");
    assert.deepEqual(
      Array.from(await y.read()),
      Array.from({ length: 100 }, (_, i) => i * 0.5 + 3),
    );
    // i32 and f16 constants: i32 inlined, f16 filled (its value is rounded on store).
    const iv = await full([3], -7, { dtype: "i32", backend: be })
      .add(full([3], 2, { dtype: "i32", backend: be }))
      .read();
    assert.deepEqual(Array.from(iv), [-5, -5, -5]);
    const hv = await full([3], 0.1, { dtype: "f16", backend: be }).cast("f32").read();
    assert.ok(
      hv.every((v) => v !== 0.1 && Math.abs(v - 0.1) < 1e-4),
      `f16 full gave ${hv[0]}`,
    );
    // Read directly, a full() storage is filled; a matmul binds it (filled) too.
    assert.deepEqual(Array.from(await full([4], 2.5, { backend: be }).read()), [2.5, 2.5, 2.5, 2.5]);
    assert.deepEqual(
      Array.from(
        await full([2, 2], 1, { backend: be })
          .matmul(tensor([1, 2, 3, 4], { shape: [2, 2], backend: be }))
          .read(),
      ),
      [4, 6, 4, 6],
    );
    // Written in place (AdamW state starts as zeros): later reads see the write, not the constant.
    const n = 8;
    const [p, m, v] = [be.upload(new Float32Array(n).fill(1), "f32"), be.full(n, 0, "f32"), be.full(n, 0, "f32")];
    const g = be.upload(new Float32Array(n).fill(1), "f32");
    be.fused.adamw?.(p, { handle: g, dtype: "f32", view: { shape: [n], strides: [1], offset: 0 } }, m, v, n, {
      lr: 0.1,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0,
      bc1: 0.1,
      sqrtBc2: Math.sqrt(0.001),
    });
    const m2 = be.binary(
      "add",
      { handle: m, dtype: "f32", view: { shape: [n], strides: [1], offset: 0 } },
      { handle: be.full(1, 0, "f32"), dtype: "f32", view: { shape: [n], strides: [0], offset: 0 } },
    );
    const mv = (await be.read(m2, "f32", n)) as Float32Array;
    assert.ok(
      mv.every((e) => Math.abs(e - 0.1) < 1e-6),
      `m after one AdamW step should be (1 - b1) g = 0.1, got ${mv[0]}`,
    );
    // Read directly (no elementwise kernel in between): v2 is still a deferred zero under the held AdamW.
    const [p2, m2z, v2] = [be.upload(new Float32Array(n).fill(1), "f32"), be.full(n, 0, "f32"), be.full(n, 0, "f32")];
    be.fused.adamw?.(p2, { handle: g, dtype: "f32", view: { shape: [n], strides: [1], offset: 0 } }, m2z, v2, n, {
      lr: 0.1,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0,
      bc1: 0.1,
      sqrtBc2: Math.sqrt(0.001),
    });
    const vv = (await be.read(v2, "f32", n)) as Float32Array;
    for (const h of [p2, m2z, v2]) be.free(h);
    assert.ok(
      vv.every((e) => Math.abs(e - 0.001) < 1e-8),
      `v after one AdamW step should be (1 - b2) g² = 0.001, got ${vv[0]}`,
    );
    for (const h of [p, m, v, g, m2]) be.free(h);
    x.dispose();
    y.dispose();
  },
);

test("out-of-range indices and targets surface as WebGpuKernelError at the next read", { skip, timeout: TIMEOUT_MS }, async () => {
  const x = tensor([1, 2, 3, 4], { shape: [2, 2], backend: be });
  const bad = gather(x, tensor([0, 5], { shape: [2, 1], dtype: "i32", backend: be }), 1);
  await assert.rejects(bad.read(), (e: unknown) => e instanceof WebGpuKernelError && e.kernel === "gather" && /out of range/.test(e.message));
  // flags are reported once; the next read is clean
  assert.deepEqual(Array.from(await x.read()), [1, 2, 3, 4]);
  const loss = crossEntropy(x, tensor([1, 9], { dtype: "i32", backend: be }), { reduction: "none" });
  await assert.rejects(loss.read(), (e: unknown) => e instanceof WebGpuKernelError && e.kernel === "crossEntropy");
  for (const t of [x, bad, loss]) t.dispose();
});

test("a shader that fails to compile is a WebGpuValidationError naming the kernel", { skip, timeout: TIMEOUT_MS }, async () => {
  const k = be.engine.compile({ name: "broken_kernel", code: "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }", bindings: [] });
  be.engine.dispatch(k, new Uint32Array(4), [], 1);
  await assert.rejects(be.sync(), (e: unknown) => e instanceof WebGpuValidationError && /broken_kernel/.test(e.message));
  await be.sync(); // reported once
});

test("debug mode names the kernel of a bad dispatch; device loss and use after dispose are typed", { skip, timeout: TIMEOUT_MS }, async () => {
  const dbg = (await acquireBackend({ debug: true })) as WebGpuBackend;
  const x = tensor([1, 2, 3], { backend: dbg });
  assert.deepEqual(
    Array.from(await x.exp().log().read()).map((v) => Math.round(v)),
    [1, 2, 3],
  );
  // a binding offset that breaks the 256-byte alignment rule: a validation error in that dispatch
  const k = dbg.engine.compile({
    name: "misaligned_kernel",
    code: `@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 16>;
@group(0) @binding(1) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(1) fn main() { o[0] = P[0].x; }`,
    bindings: ["write"],
  });
  dbg.engine.dispatch(k, new Uint32Array(4), [{ buffer: (x.storage.handle as { buffer: GPUBuffer }).buffer, offset: 4, size: 4 }], 1);
  await assert.rejects(dbg.sync(), (e: unknown) => e instanceof WebGpuValidationError && e.kernel === "misaligned_kernel");
  x.dispose();
  dbg.gpuDevice.destroy();
  await new Promise((r) => setTimeout(r, 50));
  assert.throws(() => tensor([1], { backend: dbg }), WebGpuDeviceLostError);
  dbg.dispose();
  assert.throws(() => tensor([1], { backend: dbg }), WebGpuDisposedError);
});

test("dispose", { skip, timeout: TIMEOUT_MS }, () => be.dispose());
