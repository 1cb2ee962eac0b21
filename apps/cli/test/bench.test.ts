/**
 * `lowrank plan` and `lowrank bench` argument handling, spawned under Node, Bun and Deno (the
 * suites themselves are tested in benchmarks/test: the quick rank sweep, the plan formula against
 * measured steps, the report).
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { command, lowrank } from "./spawn-cli.ts";

for (const runtime of ["node", "bun", "deno"] as const) {
  test(`plan prints every category (${runtime})`, { skip: command(runtime) ? false : `${runtime} not installed` }, async () => {
    const r = await lowrank(runtime, ["plan", "--params", "70e9", "--method", "qlora", "--rank", "16"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^model: Llama-2-70B/m);
    assert.match(r.stdout, /trainable params: 207,093,760/);
    for (const line of [
      "weights (NF4",
      "LoRA A/B",
      "gradients",
      "AdamW state",
      "activations, each layer recomputed in backward",
      "activations, all kept for backward",
      "total, with recomputation",
    ]) {
      assert.ok(r.stdout.includes(line), `missing "${line}" in\n${r.stdout}`);
    }
  });
}

test("plan with --layers/--hidden solves the MLP width from the count", async () => {
  const r = await lowrank("node", [
    "plan",
    "--params",
    "7e9",
    "--method",
    "lora",
    "--layers",
    "32",
    "--hidden",
    "4096",
    "--seq-len",
    "1024",
    "--batch-size",
    "2",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /derived: 32 layers, hidden 4096, MLP \d+ solved from the count/);
  assert.match(r.stdout, /batch 2 x seq 1024/);
});

test("plan --recompute-activations on|off overrides the method's default and says so", async () => {
  const r = await lowrank("node", ["plan", "--params", "1.1e9", "--method", "lora", "--recompute-activations", "on"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^ {2}total, with recomputation \(as asked\) +\S/m);
  const d = await lowrank("node", ["plan", "--params", "1.1e9", "--method", "lora"]);
  assert.match(d.stdout, /^ {2}total, without recomputation \(the trainer's default for lora\) +\S/m);
  const bad = await lowrank("node", ["plan", "--params", "1.1e9", "--recompute-activations", "yes"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--recompute-activations must be on or off, got yes/);
});

test("plan and bench reject bad arguments with usage errors", async () => {
  const cases: [string[], RegExp][] = [
    [["plan", "--method", "qlora"], /--params is required/],
    [["plan", "--params", "1e9", "--method", "dora"], /--method must be qlora, lora or full/],
    [["plan", "--params", "1e9", "--target-modules", "q_proj,nope"], /--target-modules/],
    [["bench"], /which suite\?/],
    [["bench", "speed"], /unknown suite "speed"/],
    [["bench", "ranks", "--fast"], /Unknown option '--fast'/],
  ];
  for (const [args, re] of cases) {
    const r = await lowrank("node", args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, re);
  }
  const help = await lowrank("node", ["bench", "--help"]);
  assert.equal(help.code, 0);
  for (const suite of ["ranks", "memory", "peer", "kernels", "cpu", "all", "report"]) assert.match(help.stdout, new RegExp(`^  ${suite} `, "m"));
});
