/**
 * The gradient table does not depend on module load order: every module that records ops
 * registers its own rules (autograd.ts owns the table and imports none). Each order runs in a
 * fresh process (ES modules load once per process): first the same table whatever module loads
 * first, then the gradient suite with its coverage check after the orders that used to fail
 * (a rule module first: "Cannot access 'fusedGradRules' before initialization").
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";

// The children are Node processes (tsx loader, node --test); under Bun and Deno the suite is skipped.
const g = globalThis as { Bun?: unknown; Deno?: unknown };
const skip = g.Bun || g.Deno ? "spawns Node processes with the tsx loader; runs under Node" : false;
const src = fileURLToPath(new URL("../src/", import.meta.url));
const MODULES = readdirSync(src)
  .filter((f) => f.endsWith(".ts"))
  .map((f) => f.slice(0, -3));
const node = (args: string[], env: Record<string, string> = {}) => {
  // Without the parent's test-runner context, a child's --test reports to its own stdout.
  const { NODE_TEST_CONTEXT: _, ...parent } = process.env;
  return execFileSync(process.execPath, ["--import", "tsx", ...args], {
    cwd: fileURLToPath(new URL("..", import.meta.url)),
    encoding: "utf8",
    env: { ...parent, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
};

function tableAfter(order: string[]): string[] {
  const script = `for (const m of ${JSON.stringify(
    order,
  )}) await import("./src/" + m + ".ts"); const t = await import("./src/index.ts"); console.log(JSON.stringify(Object.keys(t.gradRules).sort()));`;
  return JSON.parse(node(["--input-type=module", "-e", script]).trim()) as string[];
}

test("the gradient table is the same whichever tensor module loads first", { skip }, () => {
  const reference = tableAfter([]);
  assert.ok(
    reference.includes("matmul") &&
      reference.includes("softmax") &&
      reference.includes("matmul4bit") &&
      reference.includes("recompute") &&
      reference.includes("dropout"),
  );
  for (const first of MODULES) assert.deepEqual(tableAfter([first]), reference, `${first}.ts loaded first`);
  assert.deepEqual(tableAfter([...MODULES].reverse()), reference, "all modules in reverse order");
});

for (const order of [["fused"], ["recompute", "quant"], ["fused-nn", "grad"], [...MODULES].reverse()]) {
  test(`the gradient suite and its coverage check pass after loading ${order.join(", ")} first`, { skip }, () => {
    const fixture = fileURLToPath(new URL("./fixtures/coverage-in-order.ts", import.meta.url));
    const out = node(["--test", "--test-reporter=spec", fixture], { LOWRANK_LOAD_ORDER: order.join(",") });
    assert.match(out, /every gradient rule in the table was exercised by a gradcheck/);
    assert.match(out, /ℹ fail 0/);
  });
}
