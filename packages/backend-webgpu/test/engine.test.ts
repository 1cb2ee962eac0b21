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
  assert.ok(yv.every((v) => v === 6), `kernel read overwritten input: ${yv[0]}`);
  assert.ok(bv.every((v) => v === 100) && cv.every((v) => v === 7));
  for (const t of [y, b, c]) t.dispose();
});

test("dispatches beyond 65535 workgroups are folded into 2-D", { skip, timeout: TIMEOUT_MS }, async () => {
  const n = 70000 * 64 + 5;
  const before = be.engine.counters.dispatches;
  const x = full([n], 1, { backend: be });
  const y = x.add(2);
  const tail = await y.narrow(0, n - 3, 3).contiguous().read();
  assert.deepEqual(Array.from(tail), [3, 3, 3]);
  const s = await y.sum().item();
  assert.equal(s, 3 * n);
  assert.ok(be.engine.counters.dispatches - before >= 3);
  x.dispose();
  y.dispose();
});

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
  assert.deepEqual(Array.from(await x.exp().log().read()).map((v) => Math.round(v)), [1, 2, 3]);
  // a binding offset that breaks the 256-byte alignment rule: a validation error in that dispatch
  const k = dbg.engine.compile({ name: "misaligned_kernel", code: `@group(0) @binding(0) var<uniform> P: array<vec4<u32>, 16>;
@group(0) @binding(1) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(1) fn main() { o[0] = P[0].x; }`, bindings: ["write"] });
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
