/**
 * The backend conformance suite (@lowrank/tensor/testing) on the WebGPU backend: Dawn under
 * Node/Bun, navigator.gpu under Deno (`deno test -A --unstable-webgpu --no-check`). Skips with
 * the reason when no adapter is available.
 */
import { test } from "node:test";
import { conformanceSuite } from "@lowrank/tensor/testing";
import { TIMEOUT_MS, acquireBackend } from "./setup.ts";

const got = await acquireBackend();
if (typeof got === "string") {
  test(`WebGPU conformance (skipped: ${got})`, { skip: got }, () => {});
} else {
  // Bun's default per-test timeout is 5 s; lavapipe on a busy machine needs more.
  conformanceSuite({ backend: got, test: (name, fn) => test(name, { timeout: TIMEOUT_MS }, fn) });
  test("dispose releases the device", async () => {
    await got.sync();
    got.dispose();
  });
}
