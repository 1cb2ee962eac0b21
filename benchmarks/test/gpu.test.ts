/**
 * The GPU benchmark: `benchmarks/gpu/run.sh --quick --dev` end to end (lavapipe in CI; every case
 * skips with its reason where there is no adapter), its schema check, the peak table and the
 * report's GPU section with and without a GPU result.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test } from "node:test";
import { type GpuResult, checkGpuSchema, configParams, peakFor, quickConfig } from "../src/gpu.ts";
import { gpuSection } from "../src/report.ts";

const RUN_SH = resolve(import.meta.dirname, "..", "gpu", "run.sh");
const MODELS = ["stories260K", "SmolLM2-135M", "TinyLlama-1.1B"];

test("run.sh --quick writes a result where every case has a number or a reason, inside its budget", () => {
  const dir = mkdtempSync(join(tmpdir(), "lowrank-gpu-test-"));
  try {
    const out = join(dir, "gpu-quick.json");
    const t0 = performance.now();
    const r = spawnSync("bash", [RUN_SH, "--quick", "--dev", "--out", out], { encoding: "utf8", env: { ...process.env, OUT: "" }, timeout: 200_000 });
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(r.status, 0, `run.sh --quick exited ${r.status ?? r.signal}, expected 0; stderr tail:\n${(r.stderr ?? "").slice(-3000)}`);
    const res = JSON.parse(readFileSync(out, "utf8")) as GpuResult;
    assert.deepEqual(checkGpuSchema(res), [], "the result should match the schema");
    assert.equal(res.finished, true, "the quick run should finish, not stop at its limit");
    assert.ok(seconds < 180, `the quick run took ${seconds.toFixed(0)} s; expected about 30 s on 2 quiet cores, 180 s at most`);
    assert.deepEqual(
      res.cases.filter((c) => c.status === "failed").map((c) => `${c.id}: ${c.error}`),
      [],
      "no case should fail",
    );
    assert.ok(
      res.setup?.runtime && res.setup["vulkan-loader"],
      `run.sh should record its runtime and Vulkan loader in setup, got ${JSON.stringify(res.setup)}`,
    );
    for (const section of ["backends", "conformance", "kernels", "training"]) {
      assert.ok(
        res.cases.some((c) => c.section === section),
        `expected at least one ${section} case, got ${res.cases.map((c) => c.id).join("; ")}`,
      );
    }
    for (const m of MODELS) {
      for (const row of [`${m} `, "webgpu f32", "webgpu fp16", "cpu f32"]) {
        assert.ok(
          res.cases.some((c) => c.section === "training" && c.id.includes(` ${m} `) && c.id.includes(row)),
          `expected a training row for ${m} ${row}`,
        );
      }
    }
    if (res.adapter) {
      // lavapipe: every WebGPU case runs (there is no reason to skip on a working adapter with tiny shapes).
      const skipped = res.cases.filter((c) => c.status === "skipped").map((c) => `${c.id}: ${c.skipped}`);
      assert.deepEqual(skipped, [], `with an adapter (${res.adapter.name}) no quick case should skip`);
      const step = res.cases.find((c) => c.id.startsWith("train stories260K lora webgpu f32"));
      for (const k of ["tokens_per_s", "peak_bytes", "dispatches_per_step", "submits_per_step", "reads_per_step"]) {
        assert.ok(
          typeof step?.metrics?.[k] === "number" && step.metrics[k]! > 0,
          `stories260K webgpu row: expected ${k} > 0, got ${JSON.stringify(step?.metrics)}`,
        );
      }
      assert.equal(res.adapter.peak, null, "lavapipe has no published peak: % of peak must be null");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the schema check names what it expected", () => {
  const base = { suite: "gpu", schema: 1, config: { command: "x", quick: true }, wall_seconds: 1 };
  assert.deepEqual(checkGpuSchema({ ...base, cases: [{ id: "a", section: "kernels", status: "ok", metrics: { gflops: 1, pct_peak: null }, seconds: 0 }] }), []);
  const bad = checkGpuSchema({
    ...base,
    cases: [
      { id: "no number", section: "kernels", status: "ok", metrics: { pct_peak: null }, seconds: 0 },
      { id: "nan", section: "training", status: "ok", metrics: { tokens_per_s: 1, x: "NaN" }, seconds: 0 },
      { id: "no reason", section: "training", status: "skipped", seconds: 0 },
      { id: "odd", section: "other", status: "maybe", seconds: 0 },
    ],
  });
  assert.match(bad.join("\n"), /"no number": status ok but no finite number/);
  assert.match(bad.join("\n"), /"nan": metrics\.x is "NaN", expected a finite number or null/);
  assert.match(bad.join("\n"), /"no reason": status skipped but no reason/);
  assert.match(bad.join("\n"), /"odd": section "other" is not one of/);
  assert.match(bad.join("\n"), /"odd": status "maybe" is not ok, skipped or failed/);
  assert.deepEqual(checkGpuSchema({ ...base, cases: [] }), ["cases: expected a non-empty array"]);
});

test("peaks come from the table by adapter name; an unknown device has none", () => {
  assert.equal(peakFor("NVIDIA H200")?.fp32, 67);
  assert.equal(peakFor("NVIDIA H100 PCIe")?.device, "NVIDIA H100 PCIe");
  assert.equal(peakFor("NVIDIA H100 80GB HBM3 (vendor nvidia, hopper)")?.device, "NVIDIA H100 SXM5");
  assert.equal(peakFor("llvmpipe (LLVM 15.0.6, 256 bits)"), null);
  for (const p of ["NVIDIA H200", "NVIDIA A100-SXM4-80GB"])
    assert.match(peakFor(p)?.source ?? "", /whitepaper|datasheet/, `${p}: the peak should name its source`);
});

test("model configs: the real shapes' parameter counts; --quick keeps heads and kv heads", () => {
  const cfg = (n: string) => JSON.parse(readFileSync(resolve(import.meta.dirname, "..", "gpu", "configs", `${n}.json`), "utf8")) as Record<string, unknown>;
  // Published sizes: SmolLM2-135M 134.5M, TinyLlama-1.1B 1.100B, stories260K 260K (tied).
  assert.ok(Math.abs(configParams(cfg("SmolLM2-135M")) / 134.5e6 - 1) < 0.01, `SmolLM2: ${configParams(cfg("SmolLM2-135M"))}`);
  assert.ok(Math.abs(configParams(cfg("TinyLlama-1.1B")) / 1.1e9 - 1) < 0.01, `TinyLlama: ${configParams(cfg("TinyLlama-1.1B"))}`);
  assert.ok(Math.abs(configParams(cfg("stories260K")) / 260e3 - 1) < 0.05, `stories260K: ${configParams(cfg("stories260K"))}`);
  const q = quickConfig(cfg("TinyLlama-1.1B"));
  assert.deepEqual([q.num_attention_heads, q.num_key_value_heads, q.num_hidden_layers, q.vocab_size], [32, 4, 1, 512]);
});

test("REPORT.md's GPU section: a plain statement without a result, the device's figures with one", () => {
  const none = gpuSection(null, null).join("\n");
  assert.match(none, /No GPU figure exists yet/);
  assert.match(none, /benchmarks\/gpu\/run\.sh/);
  const g: GpuResult = {
    suite: "gpu",
    schema: 1,
    config: {
      command: "lowrank bench gpu --out /o/gpu.json",
      date: "2027-01-01T00:00:00Z",
      quick: false,
      budget_s: 450,
      machine: { cpu: "x", cores: 16, memoryGiB: 128, runtime: "node 20", loadavg1: 0 },
    },
    setup: { runtime: "bundle", "vulkan-loader": "unpacked into /", "nvidia-smi": "NVIDIA H200, 580.1, 143771 MiB" },
    adapter: { name: "NVIDIA H200 (vendor nvidia, hopper)", features: ["shader-f16"], f16: true, peak: peakFor("NVIDIA H200") },
    cases: [
      { id: "conformance suite (webgpu)", section: "conformance", status: "ok", metrics: { total: 112, passed: 112, failed: 0, not_run: 0 }, seconds: 9 },
      { id: "matmul f32 4096x4096x4096 webgpu", section: "kernels", status: "ok", metrics: { gflops: 20100, ms: 6.8, pct_peak: 30 }, seconds: 2 },
      {
        id: "train TinyLlama-1.1B qlora webgpu f32 batch 2x512",
        section: "training",
        status: "ok",
        metrics: {
          tokens_per_s: 5000,
          step_ms: 204,
          peak_bytes: 3 * 2 ** 30,
          dispatches_per_step: 900,
          submits_per_step: 3,
          reads_per_step: 2,
          timed_steps: 10,
          first_loss: 10.4,
          last_loss: 10.3,
        },
        seconds: 60,
      },
      {
        id: "train TinyLlama-1.1B qlora cpu f32 batch 2x512",
        section: "training",
        status: "skipped",
        skipped: "would not fit: two steps need about 400 s",
        seconds: 0,
      },
    ],
    wall_seconds: 400,
    finished: true,
  };
  const md = gpuSection(g, "/x/results/gpu-2027-01-01.json").join("\n");
  assert.doesNotMatch(md, /No GPU figure exists yet|NaN|undefined/);
  assert.match(md, /Adapter: \*\*NVIDIA H200/);
  assert.match(md, /datasheet/);
  assert.match(md, /112 of 112 passed/);
  assert.match(md, /\| train TinyLlama-1\.1B qlora webgpu f32 batch 2x512 \| 5000 \| 204 \| 3072\.0 \| 900 \/ 3 \/ 2 \|/);
  assert.match(md, /- skipped: train TinyLlama-1\.1B qlora cpu f32 batch 2x512: would not fit/);
});
