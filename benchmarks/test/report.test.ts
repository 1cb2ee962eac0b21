/** REPORT.md and the SVG plots from result files (the quick ranks result, a synthetic memory result). */
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { linePanels, stackedBarPanels, ticks } from "../src/plots.ts";
import { batchingSection, latest, writeReport } from "../src/report.ts";

test("ticks are round and enclose the range", () => {
  assert.deepEqual(ticks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(ticks(3.2, 4.9, 4), [3, 3.5, 4, 4.5, 5]);
  assert.deepEqual(ticks(0, 1323), [0, 500, 1000, 1500]);
});

test("SVG output is well formed and deterministic", () => {
  const svg = () =>
    linePanels(
      [
        {
          title: "t",
          series: [
            {
              label: "a<b",
              color: "#000",
              points: [
                { x: 1, y: 2 },
                { x: 2, y: 1, err: 0.1 },
              ],
            },
          ],
        },
      ],
      { title: "T & U", xLabel: "x", yLabel: "y" },
    );
  assert.equal(svg(), svg());
  assert.match(svg(), /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"[^>]*>[\s\S]*<\/svg>\n$/);
  assert.match(svg(), /a&lt;b/);
  assert.doesNotMatch(svg(), /NaN|undefined/);
  const bars = stackedBarPanels(
    [
      {
        title: "m",
        bars: [
          {
            label: "full",
            parts: [
              { name: "weights", value: 1 },
              { name: "grads", value: 2 },
            ],
            marker: 3,
          },
        ],
      },
    ],
    { title: "x", yLabel: "MiB", parts: ["weights", "grads"], markerLabel: "formula" },
  );
  assert.doesNotMatch(bars, /NaN|undefined/);
});

test("the report is built from the newest full result of each suite, quick runs ignored", () => {
  const dir = mkdtempSync(join(tmpdir(), "lowrank-report-test-"));
  try {
    const fixture = join(import.meta.dirname, "fixtures", "ranks-sample.json");
    copyFileSync(fixture, join(dir, "ranks-2001-01-01.json"));
    copyFileSync(fixture, join(dir, "ranks-quick-2099-01-01.json"));
    assert.equal(latest("ranks", dir), join(dir, "ranks-2001-01-01.json"));
    const file = writeReport(dir);
    const md = readFileSync(file, "utf8");
    assert.match(md, /## 1\. Rank sweep/);
    assert.match(md, /Command: `lowrank bench ranks --quick`/);
    assert.match(md, /\| lora \| all-linear \| 4 \|/);
    assert.match(md, /rejected/);
    assert.match(md, /lowrank plan --params 70e9 --method qlora --rank 16/);
    assert.doesNotMatch(md, /NaN|undefined/);
    const plots = readdirSync(join(dir, "plots"));
    assert.deepEqual(plots.sort(), ["loss-curves-shakespeare.svg", "quality-shakespeare.svg"]);
    for (const p of plots) assert.doesNotMatch(readFileSync(join(dir, "plots", p), "utf8"), /NaN|undefined/);
    assert.ok(existsSync(join(dir, "REPORT.md")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("section 9 shows each round's spread, the server CPU time ratio and the load; an older result without them still renders", () => {
  const mode = { tokens: 512, serial_s: 2, concurrent_s: 0.4, speedup: 5, p50_ms: 90, p99_ms: 120, mismatches: [] };
  const base = {
    command: "node --import tsx apps/server/bench/load.ts --batching --max-tokens 32 --rounds 1",
    max_tokens: 32,
    rounds: 1,
    batching: { decode_steps: 40, sequence_steps: 600, max_batch: 16 },
    pass: true,
  };
  const now = batchingSection(
    {
      ...base,
      load_average: [1.5, 2.25],
      results: { "4 adapters": { ...mode, round_speedups: [4.5, 5.5], server_cpu: { serial_s: 1.8, concurrent_s: 0.4, speedup: 4.5 } } },
    },
    "/x/results/batching-2099-01-01.json",
  ).join("\n");
  assert.match(now, /\| 4 adapters \| 512 \| 256\.0 \| 1280\.0 \| \*\*5\.00x\*\* \| 4\.50-5\.50x \| 4\.50x \| 90 \| 120 \| 0 \|/);
  assert.match(now, /load average 1\.50 at the start, 2\.25 at the end/);
  assert.match(now, /\*\*met\*\*/);
  const old = batchingSection({ ...base, results: { "4 adapters": mode } }, "/x/results/batching-2001-01-01.json").join("\n");
  assert.match(old, /\| \*\*5\.00x\*\* \| - \| - \|/);
  for (const md of [now, old]) assert.doesNotMatch(md, /NaN|undefined/);
});
