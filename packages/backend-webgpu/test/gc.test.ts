/**
 * Regression test for the dawn.node lifetime rule: the GPU object from create() must stay reachable
 * while a device lives, or the process segfaults at the next GC (Bun reliably, Node sometimes).
 * The fixture drops every reference but the device and forces GC between GPU round trips.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { describe, fixtureCommand, run } from "./helpers.ts";

for (const runtime of ["node", "bun"] as const) {
  test(`GPU object stays pinned under forced GC (${runtime})`, async (t) => {
    const cmd = fixtureCommand(runtime, "gc");
    if (!cmd) return t.skip(`${runtime} is not installed (npm install at the repository root)`);
    const r = await run(cmd[0], cmd[1], 120_000);
    if (r.code === 0 && r.stdout.startsWith("SKIP")) return t.skip(r.stdout.trim());
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stdout, /^OK gc: 9 round trips/m, describe(r));
    t.diagnostic(r.stdout.trim());
  });
}
