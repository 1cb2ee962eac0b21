/** Backend selection, in process (no spawning). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { BlasError } from "@lowrank/backend-cpu";
import { asBackendError, autoChoice, BackendError, describeBlas, probeWebGpu, resolveChoice, selectBackend, type WebGpuProbe } from "../src/backends.ts";
import { resolveDataDir } from "../src/data-dir.ts";

const found: WebGpuProbe = {
  available: true,
  runtime: "node",
  implementation: "Dawn (webgpu npm)",
  f16: true,
  adapter: { vendor: "mesa", architecture: "software", description: "llvmpipe: Mesa 25.0.7 (LLVM 15.0.6)" },
  description: "llvmpipe: Mesa 25.0.7 (LLVM 15.0.6) (vendor mesa, software)",
};
const missing: WebGpuProbe = { available: false, runtime: "node", reason: "no-adapter", cause: "WebGPU unavailable (node, no-adapter): no adapter found" };

test("option beats LOWRANK_BACKEND beats auto", () => {
  assert.deepEqual(resolveChoice("cpu", { LOWRANK_BACKEND: "webgpu" }), { requested: "cpu", source: "--backend" });
  assert.deepEqual(resolveChoice(undefined, { LOWRANK_BACKEND: "webgpu" }), { requested: "webgpu", source: "LOWRANK_BACKEND" });
  assert.deepEqual(resolveChoice(undefined, {}), { requested: "auto", source: "default" });
  assert.deepEqual(resolveChoice(undefined, { LOWRANK_BACKEND: "" }), { requested: "auto", source: "default" });
});

test("bad values name the source and the valid choices", () => {
  assert.throws(
    () => resolveChoice(undefined, { LOWRANK_BACKEND: "bogus" }),
    (err: unknown) => {
      assert.ok(err instanceof BackendError && err.usage);
      assert.equal(err.message, "LOWRANK_BACKEND=bogus is not a backend: use one of auto, cpu, webgpu");
      return true;
    },
  );
  assert.throws(() => resolveChoice("gpu", {}), /--backend gpu is not a backend/);
});

test("auto skips software adapters, takes hardware ones, and says why", async () => {
  assert.deepEqual(autoChoice(found), {
    name: "cpu",
    reason: "webgpu adapter llvmpipe is a software rasterizer (slower than the cpu backend); --backend webgpu forces it",
  });
  const hardware: WebGpuProbe = {
    ...found,
    adapter: { vendor: "nvidia", architecture: "hopper", description: "NVIDIA H200" },
    description: "NVIDIA H200",
  } as WebGpuProbe;
  assert.deepEqual(autoChoice(hardware), { name: "webgpu", reason: "webgpu adapter NVIDIA H200 found" });
  assert.equal(autoChoice(missing).reason, "webgpu unavailable (no-adapter)");
  const sel = await selectBackend(undefined, {}, found);
  try {
    assert.equal(sel.name, "cpu");
    assert.equal(sel.backend.name, "cpu");
    assert.equal(sel.source, "default");
    assert.match(sel.reason, /llvmpipe is a software rasterizer/);
  } finally {
    sel.backend.dispose();
  }
});

test("explicit webgpu runs kernels on the adapter, or fails with the cause", async (t) => {
  await assert.rejects(selectBackend(undefined, { LOWRANK_BACKEND: "webgpu" }, missing), /LOWRANK_BACKEND=webgpu: .*no adapter found/);
  const probe = await probeWebGpu();
  if (!probe.available) return t.skip(`no WebGPU adapter here: ${probe.cause}`);
  const sel = await selectBackend("webgpu", {});
  try {
    assert.equal(sel.name, "webgpu");
    assert.equal(sel.backend.name, "webgpu");
    const { tensor } = await import("@lowrank/tensor");
    const y = tensor(
      [
        [1, 2],
        [3, 4],
      ],
      { backend: sel.backend },
    ).matmul(tensor([[1], [1]], { backend: sel.backend }));
    assert.deepEqual(Array.from(await y.read()), [3, 7]);
  } finally {
    sel.backend.dispose();
  }
});

test("cpu needs no WebGPU probe", async () => {
  const sel = await selectBackend("cpu", {});
  sel.backend.dispose();
  assert.equal(sel.name, "cpu");
  assert.equal(sel.reason, "requested by --backend cpu");
});

test("the BLAS line names library, path, FFI and reason; a BlasError becomes a clean BackendError", () => {
  assert.equal(
    describeBlas({
      active: true,
      reason: "auto: found libopenblas.so.0",
      library: "openblas 0.3.21 pthread",
      core: "Zen",
      path: "/usr/lib/libopenblasp-r0.3.21.so",
      via: "koffi 3.3.4",
      threads: 2,
    }),
    "openblas 0.3.21 pthread (Zen) at /usr/lib/libopenblasp-r0.3.21.so via koffi 3.3.4: auto: found libopenblas.so.0",
  );
  assert.equal(describeBlas({ active: false, reason: "LOWRANK_BLAS=off" }), "none, matmul on the WASM kernel: LOWRANK_BLAS=off");
  const clean = asBackendError(new BlasError("LOWRANK_BLAS=/x.so: cannot load /x.so"));
  assert.ok(clean instanceof BackendError && !clean.usage);
  assert.equal(clean.message, "LOWRANK_BLAS=/x.so: cannot load /x.so");
  assert.equal(asBackendError(new Error("other")), null);
});

test("data dir: flag, then LOWRANK_DATA_DIR, then ../shared/data beside the repo", () => {
  assert.equal(resolveDataDir("/x/y", { LOWRANK_DATA_DIR: "/a" }).source, "--data-dir");
  assert.equal(resolveDataDir(undefined, { LOWRANK_DATA_DIR: "/a" }).path, "/a");
  const d = resolveDataDir(undefined, {});
  assert.equal(d.source, "default");
  assert.match(d.path, /[/\\]shared[/\\]data$/);
});
