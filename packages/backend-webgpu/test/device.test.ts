import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { test } from "node:test";
import { requestWebGpu as requestBrowser } from "../src/browser.ts";
import { requestWebGpu as requestDeno } from "../src/deno.ts";
import { describeAdapter, pinnedInstances, requestWebGpu, type WebGpuContext, WebGpuUnavailableError } from "../src/node.ts";

/** Acquire a Dawn device, or the reason there is none (the test then skips). */
async function acquire(): Promise<WebGpuContext | string> {
  try {
    return await requestWebGpu();
  } catch (err) {
    if (err instanceof WebGpuUnavailableError && (err.reason === "no-adapter" || err.reason === "module-load-failed")) return err.message;
    throw err;
  }
}

/** True when the machine has a render node, i.e. possibly a hardware GPU. */
function hasGpuNode(): boolean {
  return existsSync("/dev/dri") && readdirSync("/dev/dri").some((f) => f.startsWith("renderD"));
}

test("acquires a Dawn device with adapter info, raised limits and f16 when offered", async (t) => {
  const got = await acquire();
  if (typeof got === "string") return t.skip(`no WebGPU adapter: ${got}`);
  const ctx = got;
  try {
    t.diagnostic(`adapter: ${describeAdapter(ctx.adapterInfo)}`);
    assert.equal(ctx.edge, "node");
    assert.ok(ctx.adapterInfo.description.length > 0, "adapter description is empty");
    // Without a GPU the only adapter is a software one (lavapipe via Vulkan, or SwiftShader).
    if (!hasGpuNode()) assert.match(ctx.adapterInfo.description, /llvmpipe|lavapipe|swiftshader/i);
    // Raised to the adapter's own maxima, not the 128/256 MiB defaults.
    assert.equal(ctx.limits.maxStorageBufferBindingSize, ctx.adapter.limits.maxStorageBufferBindingSize);
    assert.equal(ctx.limits.maxBufferSize, ctx.adapter.limits.maxBufferSize);
    assert.equal(ctx.features.includes("shader-f16"), ctx.adapter.features.has("shader-f16"));
    assert.deepEqual([...ctx.features], [...ctx.features].sort());
    assert.equal(pinnedInstances(), 1);
  } finally {
    ctx.release();
  }
  assert.equal(ctx.released, true);
  assert.equal(pinnedInstances(), 0);
  assert.throws(() => ctx.device, /already released/);
  ctx.release(); // idempotent
});

test("f16: false leaves shader-f16 off", async (t) => {
  const got = await acquire();
  if (typeof got === "string") return t.skip(`no WebGPU adapter: ${got}`);
  got.release();
  const ctx = await requestWebGpu({ f16: false });
  try {
    assert.equal(ctx.features.includes("shader-f16"), false);
  } finally {
    ctx.release();
  }
});

test("edges for other runtimes fail with a typed error that names the fix", async () => {
  await assert.rejects(requestDeno(), (err: unknown) => {
    assert.ok(err instanceof WebGpuUnavailableError);
    assert.equal(err.reason, "wrong-runtime");
    assert.match(err.message, /only under Deno/);
    return true;
  });
  // Node 20 has no navigator at all; Bun has one without gpu.
  if (!(globalThis as { navigator?: { gpu?: unknown } }).navigator?.gpu) {
    await assert.rejects(requestBrowser(), (err: unknown) => {
      assert.ok(err instanceof WebGpuUnavailableError);
      assert.equal(err.reason, "no-webgpu-api");
      assert.match(err.message, /backend-webgpu\/node/);
      return true;
    });
  }
});

test("error messages carry edge and reason", () => {
  const err = new WebGpuUnavailableError("no-adapter", "node", "no adapter found; install the driver");
  assert.equal(err.name, "WebGpuUnavailableError");
  assert.equal(err.message, "WebGPU unavailable (node, no-adapter): no adapter found; install the driver");
  assert.ok(err instanceof Error);
});

test("describeAdapter formats a one-liner", () => {
  assert.equal(describeAdapter({ vendor: "mesa", architecture: "software", description: "llvmpipe" }), "llvmpipe (vendor mesa, software)");
  assert.equal(describeAdapter({ vendor: "", architecture: "", description: "" }), "unnamed adapter");
});
