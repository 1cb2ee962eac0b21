/**
 * The libraries in a browser-like process: every `node:` import throws (block-node.mjs), only the
 * host script (playing the page) reads the disk, and the libraries work on an in-memory storage.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { SHAKESPEARE, STORIES, dataDir } from "./helpers.ts";

const data = dataDir();
const here = fileURLToPath(new URL("./fixtures/", import.meta.url));

test(
  "the library cores load, save/load files and run() a QLoRA fine-tune with no node: module available",
  { skip: data ? false : "no shared data directory" },
  () => {
    const out = execFileSync(
      process.execPath,
      ["--import", "tsx", "--import", join(here, "block-node.mjs"), join(here, "browser-like-host.ts"), join(data!, STORIES), join(data!, SHAKESPEARE)],
      {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
        timeout: 300_000,
      },
    );
    const r = JSON.parse(out.trim().split("\n").pop()!) as Record<string, unknown>;
    assert.equal(r.blocked, false, "the host itself may import node:");
    assert.equal(r.libsBlocked, true, "a library's node edge must fail to load here");
    assert.match(r.noStorage as string, /no file storage is registered/);
    assert.deepEqual(r.written, ["/out/adapter/adapter_model.safetensors", "/out/adapter/adapter_config.json"]);
    assert.equal(r.adapterRoundTrip, true);
    assert.equal(r.runSteps, 2);
    assert.deepEqual(r.runFiles, [
      "adapter_config.json",
      "adapter_model.safetensors",
      "checkpoint-2",
      "eval_report.json",
      "metrics.jsonl",
      "tokenizer.json",
      "tokenizer_config.json",
      "training_args.json",
    ]);
    assert.equal(r.metricLines, 4, "eval before, 2 steps, eval after");
  },
);
