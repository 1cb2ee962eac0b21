/** A process that acquired and released a device must end by itself (no lingering Dawn/wgpu handles). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { describe, fixtureCommand, run } from "./helpers.ts";

/** Generous for a loaded 2-core CI machine; a healthy exit takes well under a second after release. */
const EXIT_WITHIN_MS = 8_000;

const cases = [
  { runtime: "node", edge: "node" },
  { runtime: "bun", edge: "node" },
  { runtime: "deno", edge: "deno" },
] as const;

for (const { runtime, edge } of cases) {
  test(`process exits by itself after release (${runtime}, ${edge} edge)`, async (t) => {
    const cmd = fixtureCommand(runtime, "exit", "--edge", edge);
    if (!cmd) return t.skip(`${runtime} is not installed (npm install at the repository root)`);
    const r = await run(cmd[0], cmd[1], 30_000);
    if (r.code === 0 && r.stdout.startsWith("SKIP")) return t.skip(r.stdout.trim());
    assert.equal(r.timedOut, false, `still running after 30 s: ${describe(r)}`);
    assert.equal(r.code, 0, describe(r));
    assert.match(r.stdout, /^OK exit/m, describe(r));
    assert.ok(r.ms < EXIT_WITHIN_MS, `took ${Math.round(r.ms)} ms to exit (limit ${EXIT_WITHIN_MS}): ${describe(r)}`);
    t.diagnostic(`${r.stdout.trim()}; process gone after ${Math.round(r.ms)} ms`);
  });
}
