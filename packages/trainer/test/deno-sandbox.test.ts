/** The library cores under Deno with no permissions (no --allow-read): loading, safetensors and PEFT files in memory. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";

const deno = fileURLToPath(new URL("../../../node_modules/.bin/deno", import.meta.url));
const g = globalThis as { Bun?: unknown; Deno?: unknown };
const skip = g.Bun || g.Deno ? "spawns Deno from Node" : existsSync(deno) ? false : "deno is not installed (node_modules/.bin/deno)";

test("the library cores run under `deno run --no-prompt` (no read, env or FFI permission) on an in-memory storage", { skip, timeout: 120_000 }, () => {
  const fixture = fileURLToPath(new URL("./fixtures/deno-sandbox.ts", import.meta.url));
  const out = execFileSync(deno, ["run", "--no-prompt", fixture], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NO_COLOR: "1" },
  });
  const r = JSON.parse(out.trim().split("\n").pop()!) as { values: number[]; files: string[]; adapters: number };
  assert.deepEqual(r.values, [3, 4]);
  assert.deepEqual(r.files, ["/w/adapter/adapter_model.safetensors", "/w/adapter/adapter_config.json"]);
  assert.equal(r.adapters, 1);
});
