/**
 * `lowrank bench <suite>`: argument parsing and file output for the suites (`lowrank plan` is
 * apps/cli/src/plan.ts). apps/cli only forwards to this. Also runnable directly:
 *   node --import tsx benchmarks/src/bench.ts <suite> [--quick]
 */
import { spawn } from "node:child_process";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { resolveDataDir } from "@lowrank/nn/node";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { BENCH_DIR, CONFIGS_DIR, RESULTS_DIR, log, today, writeJson } from "./common.ts";
import { checkGpuSchema, runGpu } from "./gpu.ts";
import { runKernels } from "./kernels.ts";
import { type MemoryConfig, runMemory } from "./memory.ts";
import { loadPeerConfig, runPeer } from "./peer.ts";
import { PLAN_PRESETS, type PlanMethod, type PlanShape, estimate } from "@lowrank/trainer";
import { checkRanksSchema, loadRanksConfig, runRanks } from "./ranks.ts";
import { type ModelsResult, checkModelsSchema, runModels } from "./real-models.ts";
import { writeReport } from "./report.ts";

type Env = Record<string, string | undefined>;
export const SUITES = ["ranks", "memory", "peer", "kernels", "cpu", "gpu", "models", "all", "report"] as const;

export const BENCH_USAGE = `lowrank bench <${SUITES.join("|")}> [--quick] [--out <file.json>] [--config <file.json>] [--no-webgpu] [--data-dir <dir>]`;

const BENCH_HELP = `${BENCH_USAGE}

Suites (results in benchmarks/results/, then REPORT.md and plots/ are regenerated):
  ranks     LoRA/QLoRA rank sweep on stories260K (configs/ranks.json; --quick: configs/ranks-quick.json,
            about 15 s, writes ranks-quick-<date>.json and checks its schema)
  memory    bytes per category of one training step, measured vs the plan formula
  peer      Lowrank vs PyTorch (scripts/install-peer.sh) tokens/s on the same step, with a kernel profile
  kernels   matmul, 4-bit matmul and attention GFLOP/s per backend, % of the measured peak
  cpu       the CPU engine/op benchmarks (benchmarks/src/run.ts)
  gpu       the WebGPU path for a real GPU (benchmarks/gpu/run.sh runs it on a bare machine): backends,
            conformance, matmul f32/f16 vs the device's peak, NF4 matmul, attention, training tokens/s,
            peak bytes and dispatches per step for stories260K, SmolLM2-135M and TinyLlama-1.1B shapes;
            under 8 minutes, writes gpu-<date>.json (--quick: tiny shapes, lavapipe in CI)
  models    the real configs of SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B (data dir configs/) as random
            bf16 sharded checkpoints in a temporary directory: load, 3 LoRA and 3 QLoRA steps on the CPU
            (1 x 64 tokens), peak memory vs lowrank plan, PEFT adapter keys and target_modules, greedy
            generation; 6.6 minutes and 5.5 GiB resident measured on 2 shared cores (--quick: seconds)
  all       ranks, memory, peer, kernels (21 minutes measured on 2 shared cores)
  report    only regenerate REPORT.md and the SVG plots from the newest results`;

const memoryConfig = (quick: boolean): MemoryConfig => ({
  name: quick ? "memory-quick" : "memory",
  batch: 2,
  seq: 128,
  rank: 8,
  alpha: 16,
  targets: "all-linear",
  dropout: 0.05,
  cases: [
    ...(["full", "lora", "qlora"] as const).flatMap((m) => [
      { shape: "stories260K", method: m, recompute: false },
      { shape: "stories260K", method: m, recompute: true },
    ]),
    { shape: "stories15M", method: "full" },
    { shape: "stories15M", method: "lora" },
    { shape: "stories15M", method: "lora", recompute: true },
    { shape: "stories15M", method: "qlora" },
    ...(quick ? [] : (["stories42M", "stories110M"] as const).flatMap((shape) => (["full", "lora", "qlora"] as const).map((method) => ({ shape, method })))),
  ],
  skipped: [tinyLlamaSkip()],
});

/** Why the 1B shape is not measured, with the formula's numbers for it. */
function tinyLlamaSkip() {
  const shape = PLAN_PRESETS.find((p) => p.name === "TinyLlama-1.1B") as PlanShape;
  const gib = (m: PlanMethod) =>
    (estimate({ shape, method: m, rank: 8, targets: "all-linear", batch: 2, seq: 128, dropout: 0.05 }).totalBytes / 2 ** 30).toFixed(1);
  return {
    shape: "TinyLlama-1.1B (dim 2048, 22 layers, MLP 5632, 32/4 heads, vocab 32000)",
    reason:
      `not run: by the formula one step at batch 2 x 128 needs ${gib("full")} GiB (full), ${gib("lora")} GiB (lora), ${gib("qlora")} GiB (qlora) ` +
      "on a 23 GiB machine shared with other jobs, and building it (1.1B random normals drawn in JS, 0.97B weights NF4-quantized) plus two steps " +
      "at the 20-30 GFLOP/s measured here (about 1.1 TFLOP per full step) would take well over 10 minutes of the suite's 20-30; `lowrank plan --params 1.1e9` prints its estimate.",
  };
}

/** `lowrank bench ...`; `command` is how the user invoked it (recorded in the results). */
export async function benchCommand(argv: string[], env: Env = process.env, command = `lowrank bench ${argv.join(" ")}`): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        quick: { type: "boolean" },
        out: { type: "string" },
        config: { type: "string" },
        "no-webgpu": { type: "boolean" },
        "data-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    console.error(`lowrank bench: ${(e as Error).message}; usage: ${BENCH_USAGE}`);
    return 2;
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    console.log(BENCH_HELP);
    return 0;
  }
  const suite = positionals[0];
  if (!suite || positionals.length > 1 || !(SUITES as readonly string[]).includes(suite)) {
    console.error(`lowrank bench: ${suite ? `unknown suite "${positionals.join(" ")}"` : "which suite?"}; usage: ${BENCH_USAGE}`);
    return 2;
  }
  const quick = v.quick ?? false;
  const cmd = command.trim();
  if (suite === "report") {
    log(`wrote ${writeReport()}`);
    return 0;
  }
  if (suite === "cpu") return await runCpuSuite(quick, v.out);
  if (suite === "gpu") return await runGpuSuite(quick, v.out ? resolve(v.out) : join(RESULTS_DIR, `gpu${quick ? "-quick" : ""}-${today()}.json`), cmd, env);
  let dataDir: string | null;
  try {
    dataDir = await resolveDataDir({ dataDir: v["data-dir"], env });
  } catch (e) {
    console.error(`lowrank bench ${suite}: ${(e as Error).message}`);
    return 1;
  }
  if (suite === "models") {
    if (!dataDir) {
      console.error("lowrank bench models: no data directory (its configs/ holds the models' config.json files): pass --data-dir or set LOWRANK_DATA_DIR");
      return 1;
    }
    return await runModelsSuite(
      quick,
      v.out ? resolve(v.out) : join(RESULTS_DIR, `models${quick ? "-quick" : ""}-${today()}.json`),
      dataDir,
      cmd,
      !quick && !v.out,
    );
  }
  const suites = suite === "all" ? ["ranks", "memory", "peer", "kernels"] : [suite];
  const out = (name: string) => (v.out && suites.length === 1 ? resolve(v.out) : join(RESULTS_DIR, `${name}${quick ? "-quick" : ""}-${today()}.json`));
  for (const s of suites) {
    const t0 = performance.now();
    if (s === "ranks") {
      if (!dataDir) {
        console.error("lowrank bench ranks: no data directory (stories260K and the datasets): pass --data-dir or set LOWRANK_DATA_DIR");
        return 1;
      }
      const cfg = loadRanksConfig(v.config ?? join(CONFIGS_DIR, quick ? "ranks-quick.json" : "ranks.json"));
      const backend = createCpuBackend();
      try {
        const r = await runRanks(cfg, { backend, dataDir, command: cmd });
        const problems = checkRanksSchema(JSON.parse(JSON.stringify(r)));
        writeJson(out(s), r);
        log(`wrote ${out(s)}`);
        if (problems.length) {
          console.error(`lowrank bench ranks: the result does not match the schema:\n  ${problems.join("\n  ")}`);
          return 1;
        }
        printRanks(r.runs, r.full_ft);
      } finally {
        backend.dispose();
      }
    } else if (s === "memory") {
      writeJson(out(s), await runMemory(memoryConfig(quick), { dataDir, command: cmd }));
    } else if (s === "peer") {
      writeJson(out(s), await runPeer(loadPeerConfig(v.config ?? join(CONFIGS_DIR, "peer.json")), { command: cmd, quick, webgpu: !v["no-webgpu"], dataDir }));
    } else if (s === "kernels") {
      writeJson(out(s), await runKernels({ quick, command: cmd, webgpu: !v["no-webgpu"] }));
    }
    log(`${s}: wrote ${out(s)} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  }
  if (!quick && !v.out) log(`wrote ${writeReport()}`);
  return 0;
}

function printRanks(runs: Awaited<ReturnType<typeof runRanks>>["runs"], full: Awaited<ReturnType<typeof runRanks>>["full_ft"]): void {
  for (const [task, f] of Object.entries(full)) console.log(`${task} full: eval loss ${f.eval_loss.toFixed(4)}, ${Math.round(f.tokens_per_s)} tok/s`);
  for (const r of runs) {
    console.log(
      `${r.task} ${r.method} ${r.targets} r=${r.rank}: ${
        r.status === "ok"
          ? `eval ${r.eval_loss?.toFixed(4)} quality ${r.quality?.toFixed(3)} ± ${r.quality_std?.toFixed(3)}, ${Math.round(r.tokens_per_s ?? 0)} tok/s`
          : `rejected (${r.error})`
      }`,
    );
  }
}

/** `lowrank bench gpu`: the result is written after every case; exit 1 when it breaks the schema or a case failed. */
async function runGpuSuite(quick: boolean, out: string, command: string, env: Env): Promise<number> {
  const r = await runGpu({ quick, out, command, env });
  const problems = checkGpuSchema(JSON.parse(JSON.stringify(r)));
  for (const c of r.cases)
    console.log(
      `${c.status.padEnd(7)} ${c.id}: ${
        c.status === "ok"
          ? Object.entries(c.metrics ?? {})
              .map(([k, x]) => `${k} ${typeof x === "number" ? +x.toPrecision(4) : x}`)
              .join(", ")
          : c.skipped ?? c.error
      }`,
    );
  log(`gpu: wrote ${out} (${r.wall_seconds.toFixed(0)} s)`);
  if (problems.length) console.error(`lowrank bench gpu: the result does not match the schema:\n  ${problems.join("\n  ")}`);
  const failed = r.cases.filter((c) => c.status === "failed");
  if (failed.length) console.error(`lowrank bench gpu: ${failed.length} case(s) failed: ${failed.map((c) => c.id).join("; ")}`);
  return problems.length || failed.length ? 1 : 0;
}

/** `lowrank bench models`: exit 1 when a run failed or the result breaks the schema. */
async function runModelsSuite(quick: boolean, out: string, dataDir: string, command: string, report: boolean): Promise<number> {
  let r: ModelsResult;
  try {
    r = await runModels({ quick, dataDir, command });
  } catch (e) {
    console.error(`lowrank bench models: ${(e as Error).message}`);
    return 1;
  }
  writeJson(out, r);
  const mib = (b: number | undefined) => (b === undefined ? "-" : (b / 2 ** 20).toFixed(0));
  console.log("model          method  load s  step s  peak MiB  plan MiB  peak/plan  adapter");
  for (const m of r.models) {
    for (const x of m.runs) {
      console.log(
        `${m.name.padEnd(14)} ${x.method.padEnd(6)}  ${
          x.status === "failed" && x.load_s === undefined
            ? `failed: ${x.error}`
            : `${x.load_s?.toFixed(1).padStart(6)}  ${x.step_s?.toFixed(2).padStart(6)}  ${mib(x.peak_bytes).padStart(8)}  ${mib(x.plan_bytes).padStart(
                8,
              )}  ${x.peak_vs_plan?.toFixed(3).padStart(9)}  ${x.adapter?.ok ? "PEFT keys ok" : x.error ?? "-"}`
        }`,
      );
    }
  }
  log(`models: wrote ${out} (${r.wall_seconds.toFixed(0)} s)`);
  if (report) log(`wrote ${writeReport()}`);
  const problems = checkModelsSchema(JSON.parse(JSON.stringify(r)));
  if (problems.length) console.error(`lowrank bench models: ${problems.length} problem(s):\n  ${problems.join("\n  ")}`);
  return problems.length ? 1 : 0;
}

/** The existing CPU engine/op suite (run.ts), in a child process of the same runtime. */
function runCpuSuite(quick: boolean, out?: string): Promise<number> {
  const script = join(BENCH_DIR, "src", "run.ts");
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  const rt = g.Bun ? [script] : g.Deno ? ["run", "-A", script] : ["--import", "tsx", script];
  const args = [...rt, ...(quick ? ["--quick"] : []), ...(out ? ["--out", out] : [])];
  return new Promise((done) => {
    const child = spawn(process.execPath, args, { cwd: BENCH_DIR, stdio: "inherit" });
    child.on("error", (e) => {
      console.error(`lowrank bench cpu: ${e.message}`);
      done(1);
    });
    child.on("close", (code) => done(code ?? 1));
  });
}
