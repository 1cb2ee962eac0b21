/**
 * Picks the backend inside the worker: WebGPU when navigator.gpu gives an adapter and a small
 * training step on it matches the CPU; the CPU backend otherwise, with the reason kept for the page.
 */
import { type WasmMatmulEngine, createCpuBackend } from "@lowrank/backend-cpu";
import { type WebGpuContext, createWebGpuBackend, describeAdapter, requestWebGpu } from "@lowrank/backend-webgpu/browser";
import { type Backend, crossEntropy, scope, tensor } from "@lowrank/tensor";
import type { BackendInfo, BackendPref, SimdPref } from "../protocol.ts";

/** One forward + backward of a tiny matmul and cross-entropy; returns the loss and the weight gradient. */
async function probe(backend: Backend): Promise<number[]> {
  const x = tensor(
    Array.from({ length: 15 }, (_, i) => Math.sin(i + 1)),
    { shape: [3, 5], backend },
  );
  const w = tensor(
    Array.from({ length: 20 }, (_, i) => Math.cos(i) / 4),
    { shape: [5, 4], backend, requiresGrad: true },
  );
  const loss = scope(() => crossEntropy(x.matmul(w), tensor([1, 3, 0], { dtype: "i32", backend })));
  loss.backward();
  const out = [await loss.item(), ...Array.from(await w.grad!.read())];
  for (const t of [x, w.grad!, w, loss]) t.dispose();
  return out;
}

/** Why WebGPU cannot be used here, or null when `backend` computes what the CPU computes. */
async function checkAgainstCpu(backend: Backend): Promise<string | null> {
  const cpu = createCpuBackend({ threads: 0 });
  try {
    const [want, got] = [await probe(cpu), await probe(backend)];
    const worst = Math.max(...want.map((v, i) => Math.abs(v - got[i])));
    return worst <= 1e-4 ? null : `its kernels disagree with the CPU on a test step (max error ${worst.toExponential(2)})`;
  } catch (e) {
    return `its test step failed: ${(e as Error).message}`;
  } finally {
    cpu.dispose();
  }
}

async function tryWebGpu(): Promise<{ backend: Backend | null; adapter: string | null; fallback: boolean; note: string }> {
  let ctx: WebGpuContext;
  try {
    ctx = await requestWebGpu();
  } catch (e) {
    return { backend: null, adapter: null, fallback: false, note: (e as Error).message };
  }
  const adapter = describeAdapter(ctx.adapterInfo);
  // A software adapter (SwiftShader in headless Chromium) works but is often slower than the CPU backend.
  const fallback = (ctx.adapter as GPUAdapter & { info?: { isFallbackAdapter?: boolean } }).info?.isFallbackAdapter === true;
  let backend: Backend;
  try {
    backend = createWebGpuBackend(ctx);
  } catch (e) {
    ctx.release();
    return { backend: null, adapter, fallback, note: `the WebGPU backend failed to start on ${adapter}: ${(e as Error).message}` };
  }
  const bad = await checkAgainstCpu(backend);
  if (bad) {
    backend.dispose();
    return { backend: null, adapter, fallback, note: `WebGPU adapter ${adapter} found, but ${bad}` };
  }
  return { backend, adapter, fallback, note: "" };
}

export async function pickBackend(pref: BackendPref, simd: SimdPref = "auto"): Promise<{ backend: Backend; info: BackendInfo }> {
  const isolated = (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === true;
  let adapter: string | null = null;
  let note: string | null = null;
  if (pref !== "cpu") {
    const gpu = await tryWebGpu();
    if (gpu.backend)
      return {
        backend: gpu.backend,
        info: { kind: "webgpu", device: gpu.backend.device, adapter: gpu.adapter, fallback: gpu.fallback, note: null, isolated, simd: null },
      };
    adapter = gpu.adapter;
    note = gpu.note;
    if (pref === "webgpu") note = `WebGPU was asked for but is not usable: ${note}`;
  }
  const backend = createCpuBackend({ simd });
  // Worker threads boot asynchronously in a browser; wait so the description counts them.
  await (backend.engine as Partial<WasmMatmulEngine>).ready?.();
  if (!isolated) note = [note, "the page is not cross-origin isolated, so the CPU matmul runs on one thread"].filter(Boolean).join("; ");
  return { backend, info: { kind: "cpu", device: backend.device, adapter, fallback: false, note, isolated, simd: backend.simd } };
}
