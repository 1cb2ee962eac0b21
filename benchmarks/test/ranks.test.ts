/**
 * `lowrank bench ranks --quick` end to end, twice: the result file matches the schema, and the
 * rerun reproduces every loss bit for bit on the CPU backend (same config, same seeds). Speed is
 * not checked. About 30-60 s on 2 cores.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { type RanksResult, checkRanksSchema } from "../src/ranks.ts";
import { noData } from "./helpers.ts";

const ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const BIN = join(ROOT, "apps", "cli", "bin", "lowrank.mjs");

function lowrank(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((done, fail) => {
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT; // the child is a plain CLI run, not a test reporter
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d));
    child.stderr.on("data", (d: Buffer) => (out += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 170_000);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      done({ code, out });
    });
  });
}

test("bench ranks --quick: schema, rejected ranks recorded, identical losses on rerun", { skip: noData, timeout: 360_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "lowrank-ranks-test-"));
  try {
    const runs: RanksResult[] = [];
    for (const name of ["a", "b"]) {
      const file = join(dir, `${name}.json`);
      const r = await lowrank(["bench", "ranks", "--quick", "--out", file]);
      assert.equal(r.code, 0, r.out);
      const json = JSON.parse(readFileSync(file, "utf8")) as RanksResult;
      assert.deepEqual(checkRanksSchema(json), []);
      runs.push(json);
    }
    const [a, b] = runs;
    // r = 64 does not fit v_proj/k_proj (out_features 32): the trainer's error is recorded, not hidden.
    const rejected = a.runs.filter((x) => x.status === "rejected");
    assert.ok(rejected.length > 0 && rejected.every((x) => x.rank === 64 && /min\(in_features 64, out_features 32\)/.test(x.error ?? "")));
    for (const x of a.runs.filter((r) => r.status === "ok")) {
      assert.ok(Number.isFinite(x.quality) && (x.trainable_params as number) > 0 && (x.adapter_bytes as number) > 0);
    }
    // Same seeds, same machine: every train loss and eval loss identical, not just close.
    const losses = (r: RanksResult) => [
      ...Object.values(r.full_ft).flatMap((f) => f.seeds.flatMap((s) => [...s.train_losses, s.eval_loss])),
      ...r.runs.flatMap((x) => x.seeds.flatMap((s) => [...s.train_losses, s.eval_loss])),
    ];
    assert.ok(losses(a).length > 20);
    assert.deepEqual(losses(b), losses(a));
    assert.deepEqual(b.base, a.base);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
