/**
 * REPORT.md and the SVG plots, generated from the newest results/<suite>-<date>.json of each
 * suite (quick runs excluded). Every number in the report is read from those files, and each
 * section names the command that wrote its file. `lowrank bench report` regenerates it alone;
 * the full suites regenerate it after writing their results.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { RESULTS_DIR, fmtMiB } from "./common.ts";
import type { GpuCase, GpuResult } from "./gpu.ts";
import type { KernelsResult } from "./kernels.ts";
import type { MemoryResult, MemoryRow } from "./memory.ts";
import type { PeerResult } from "./peer.ts";
import { PLAN_PRESETS, estimate, planShapeFor, planText } from "@lowrank/trainer";
import { type Panel, type Series, color, linePanels, stackedBarPanels } from "./plots.ts";
import type { RankRun, RanksResult } from "./ranks.ts";
import type { ModelsResult } from "./real-models.ts";

/** Newest results/<prefix>-YYYY-MM-DD.json, or null. */
export function latest(prefix: string, dir = RESULTS_DIR): string | null {
  if (!existsSync(dir)) return null;
  const re = new RegExp(`^${prefix}-\\d{4}-\\d{2}-\\d{2}\\.json$`);
  const f = readdirSync(dir)
    .filter((x) => re.test(x))
    .sort()
    .pop();
  return f ? join(dir, f) : null;
}

const read = <T>(f: string | null): T | null => (f ? (JSON.parse(readFileSync(f, "utf8")) as T) : null);
const pm = (m: number | null, s: number | null, d = 3) => (m === null ? "-" : `${m.toFixed(d)} ± ${(s ?? 0).toFixed(d)}`);
const int = (v: number | null) => (v === null ? "-" : Math.round(v).toLocaleString("en-US"));
const mins = (s: number) => `${(s / 60).toFixed(1)} min`;
const rel = (f: string) => `results/${basename(f)}`;
const table = (h: string[], rows: (string | number)[][]) =>
  [`| ${h.join(" | ")} |`, `|${h.map(() => "---").join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");

function ranksSection(r: RanksResult, file: string, plots: Map<string, string>): string[] {
  const c = r.config;
  const out = [
    "## 1. Rank sweep: LoRA and QLoRA on stories260K",
    "",
    `Command: \`${c.command}\` → \`${rel(file)}\` (${mins(r.wall_seconds)} wall; ${c.machine.cpu}, ${
      c.machine.cores
    } cores, load average ${c.machine.loadavg1.toFixed(2)} at the start; backend ${c.backend}). Config: \`benchmarks/configs/${c.name}.json\`.`,
    "",
    `Seeds ${c.seeds.join(", ")} (mean ± sample std over seeds); lora_alpha = ${c.alpha_over_rank} × r; dropout ${c.dropout}; AdamW, ${
      c.scheduler
    } schedule, warmup ${c.warmup}, clipping ${
      c.max_grad_norm
    }; QLoRA = NF4 + double quant base with activations recomputed in backward (the trainer's defaults). Every run of a task is evaluated on the same held-out split (data seed ${
      c.data_seed
    }); the run seed sets LoRA init, dropout and batch order. **quality = (base loss − method loss) / (base loss − full fine-tune loss)**, base = the dense stories260K, full = the mean of the full fine-tuning seeds. tokens/s counts every position processed (batch × padded length) over the training loop's time; peak = the largest per-step \`backend.memory().peakBytes\` (everything live: weights, optimizer state, activations). adapter bytes = the written \`adapter_model.safetensors\`.`,
  ];
  for (const task of c.tasks) {
    const base = r.base[task.name];
    const full = r.full_ft[task.name];
    const tokens = task.steps * task.batch_size * task.seq_len;
    out.push(
      "",
      `### ${task.name}: \`${task.data}\`${task.format ? ` (${task.format})` : ""}`,
      "",
      `${task.steps} steps × ${task.batch_size} sequences × ≤ ${task.seq_len} tokens (≤ ${tokens.toLocaleString("en-US")} tokens per run); lr ${
        task.lr.lora
      } (LoRA, QLoRA), ${task.lr.full} (full); ${base.train_examples} train / ${base.eval_examples} eval examples, eval on ${base.eval_tokens.toLocaleString(
        "en-US",
      )} target tokens.`,
      "",
      `Base eval loss ${base.eval_loss.toFixed(4)} (NF4 base ${base.quantized_eval_loss.toFixed(4)}). Full fine-tuning: eval loss ${pm(
        full.eval_loss,
        full.eval_loss_std,
        4,
      )}, ${full.trainable_params.toLocaleString("en-US")} trainable params, model file ${int(full.model_bytes)} bytes, peak ${fmtMiB(
        full.peak_bytes,
      )} MiB, ${int(full.tokens_per_s)} ± ${int(full.tokens_per_s_std)} tokens/s.`,
      "",
    );
    const runs = r.runs.filter((x) => x.task === task.name);
    out.push(
      table(
        ["method", "targets", "r", "trainable params", "adapter bytes", "peak MiB", "tokens/s", "eval loss", "quality"],
        runs.map((x) =>
          x.status === "rejected"
            ? [
                x.method,
                x.targets,
                x.rank,
                "-",
                "-",
                "-",
                "-",
                "rejected by the trainer",
                `- (${(x.error ?? "").replace(/^LoRA config does not fit the model: /, "")})`,
              ]
            : [
                x.method,
                x.targets,
                x.rank,
                int(x.trainable_params),
                int(x.adapter_bytes),
                fmtMiB(x.peak_bytes as number),
                `${int(x.tokens_per_s)} ± ${int(x.tokens_per_s_std)}`,
                pm(x.eval_loss, x.eval_loss_std, 4),
                pm(x.quality, x.quality_std),
              ],
        ),
      ),
    );
    for (const [k, v] of plots) if (k.startsWith(`${task.name}/`)) out.push("", `![${k}](${v})`);
  }
  return out;
}

function rankPlots(r: RanksResult, dir: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const task of r.config.tasks) {
    const runs = r.runs.filter((x) => x.task === task.name && x.status === "ok");
    const groups = [...new Set(runs.map((x) => `${x.method} ${x.targets}`))];
    const full = r.full_ft[task.name];
    const fullSeries: Series = { label: "full FT", color: "#000", dashed: true, points: full.loss_curve.map((y, i) => ({ x: i + 1, y })) };
    const ranks = [...new Set(runs.map((x) => x.rank))].sort((a, b) => a - b);
    const panels: Panel[] = groups.map((g) => ({
      title: g,
      series: [
        ...runs
          .filter((x) => `${x.method} ${x.targets}` === g)
          .map((x) => ({
            label: `r=${x.rank}`,
            color: color(ranks.indexOf(x.rank)),
            points: (x.loss_curve as number[]).map((y, i) => ({ x: i + 1, y })),
          })),
        fullSeries,
      ],
    }));
    const lossFile = `loss-curves-${task.name}.svg`;
    writeFileSync(
      join(dir, lossFile),
      linePanels(panels, { title: `${task.name}: train loss per step (mean over seeds)`, xLabel: "step", yLabel: "train loss" }),
    );
    files.set(`${task.name}/loss curves`, `plots/${lossFile}`);
    const byGroup = (g: string): RankRun[] =>
      runs.filter((x) => `${x.method} ${x.targets}` === g).sort((a, b) => (a.trainable_params as number) - (b.trainable_params as number));
    const series: Series[] = groups.map((g, i) => ({
      label: g,
      color: color(i),
      points: byGroup(g).map((x) => ({ x: x.trainable_params as number, y: x.quality as number, err: x.quality_std ?? 0 })),
    }));
    series.push({
      label: "full FT (= 1)",
      color: "#000",
      dashed: true,
      points: [
        { x: Math.min(...runs.map((x) => x.trainable_params as number)), y: 1 },
        { x: full.trainable_params, y: 1 },
      ],
    });
    const qFile = `quality-${task.name}.svg`;
    writeFileSync(
      join(dir, qFile),
      linePanels([{ title: "quality vs trainable parameters", series }], {
        title: `${task.name}: quality = (base − method) / (base − full FT), mean ± std`,
        xLabel: "trainable parameters (log)",
        yLabel: "quality",
        logX: true,
      }),
    );
    files.set(`${task.name}/quality`, `plots/${qFile}`);
  }
  return files;
}

const CATS = ["weights", "lora", "gradients", "optimizer", "activations", "update"] as const;

function memorySection(m: MemoryResult, file: string, plot: string): string[] {
  const c = m.config;
  const label = (r: MemoryRow) => `${r.method}${r.recompute ? " +recompute" : ""}`;
  const out = [
    "## 2. Memory: full vs LoRA vs QLoRA, measured and by formula",
    "",
    `Command: \`${c.command}\` → \`${rel(file)}\` (${mins(m.wall_seconds)} wall). One training step (batch ${c.batch} × ${c.seq} tokens, LoRA r=${
      c.rank
    } alpha ${c.alpha} on ${typeof c.targets === "string" ? c.targets : c.targets.join(",")}, dropout ${
      c.dropout
    }, AdamW) on the CPU backend, whose allocator counts every storage. Weights of stories260K are the real ones; the other shapes are llama2.c's (stories15M/42M/110M: dim 288/512/768, 6/8/12 layers, MLP 768/1376/2048, vocab 32000, tied head) with random weights. "+recompute" = each layer's activations recomputed in backward (QLoRA's default).`,
    "",
    "Categories (MiB, measured / formula): weights = the model as held (NF4 + DQ for QLoRA) incl. RoPE tables; LoRA = A and B; gradients = growth over forward + backward; optimizer = AdamW state; activations = forward/backward peak minus the rest; update = the optimizer step's transient above the rest (AdamW's temporaries for its largest tensor, or the grad-norm's squares). Peak = the larger phase. Formula: `benchmarks/src/plan.ts` (the same code as `lowrank plan`).",
    "",
    table(
      ["model", "method", "params", "trainable", ...CATS, "peak measured", "peak formula", "measured / formula"],
      m.rows.map((r) => [
        r.shape,
        label(r),
        int(r.params),
        int(r.trainable),
        ...CATS.map((k) => `${fmtMiB(r.measured[k])} / ${fmtMiB(r.formula[k])}`),
        fmtMiB(r.measured.peak),
        fmtMiB(r.formula.peak),
        r.peakRatio.toFixed(3),
      ]),
    ),
    "",
    `Largest deviation of the formula's peak: ${(100 * Math.max(...m.rows.map((r) => Math.abs(r.peakRatio - 1)))).toFixed(1)}%.`,
  ];
  for (const s of m.skipped) out.push("", `Not measured: **${s.shape}**: ${s.reason}`);
  out.push("", `![memory by category](${plot})`);
  return out;
}

function memoryPlot(m: MemoryResult, dir: string): string {
  const shapes = [...new Set(m.rows.map((r) => r.shape))];
  const groups = shapes.map((s) => ({
    title: s,
    bars: m.rows
      .filter((r) => r.shape === s)
      .map((r) => ({
        label: `${r.method}${r.recompute ? "+recompute" : ""}`,
        // The peak is the larger phase: show the activations or the update transient, whichever set it.
        parts: CATS.filter((k) =>
          k === "update" ? r.measured.update > r.measured.activations : k === "activations" ? r.measured.activations >= r.measured.update : true,
        ).map((k) => ({ name: k, value: r.measured[k] / 2 ** 20 })),
        marker: r.formula.peak / 2 ** 20,
      })),
  }));
  const f = "memory-stacked.svg";
  writeFileSync(
    join(dir, f),
    stackedBarPanels(groups, {
      title: "Measured memory of one training step by category (MiB; bar = measured peak)",
      yLabel: "MiB",
      parts: [...CATS],
      markerLabel: "formula peak",
    }),
  );
  return `plots/${f}`;
}

function peerSection(p: PeerResult, file: string): string[] {
  const c = p.config;
  const out = [
    "## 3. PyTorch peer baseline",
    "",
    `Command: \`${c.command}\` → \`${rel(file)}\` (${mins(p.wall_seconds)} wall). PyTorch: \`OPENBLAS_NUM_THREADS=${c.torch.env.OPENBLAS_NUM_THREADS} ${
      c.torch.python
    } benchmarks/src/peer_torch.py\` (torch.set_num_threads(${c.torch.threads})), installed by \`scripts/install-peer.sh\`${
      c.torch_available ? "" : ` — **unavailable here: ${c.torch_reason}**`
    }. Same model shape, LoRA r=${c.rank} alpha ${c.alpha} on ${typeof c.targets === "string" ? c.targets : c.targets.join(",")} (dropout ${
      c.dropout
    }), batch, sequence length, AdamW lr ${
      c.lr
    }, clipping 1.0, random weights and synthetic tokens; QLoRA in torch = NF4 codes dequantized per forward + activations recomputed (torch's checkpoint), like Lowrank's default. Order: torch, Lowrank on each backend, torch again; torch tokens/s = the median of both runs' steps. **ratio = Lowrank tokens/s ÷ PyTorch tokens/s** (goal ≥ 1.0).`,
    "",
  ];
  const tv = Object.values(p.torch_runs)[0]?.[0];
  if (tv) out.push(`torch ${tv.torch_version}, BLAS loaded: ${tv.blas_libraries.map((l) => `\`${l}\``).join(", ")}.`, "");
  out.push(
    table(
      ["model (batch × seq)", "method", "backend", "Lowrank tokens/s", "PyTorch tokens/s", "ratio", "first losses Lowrank / torch", "note"],
      p.results.map((r) => [
        `${r.shape} (${c.cases.find((x) => x.shape === r.shape)?.batch} × ${c.cases.find((x) => x.shape === r.shape)?.seq})`,
        r.method,
        r.backend,
        int(r.lowrank_tokens_per_s),
        int(r.torch_tokens_per_s),
        r.ratio === null ? "-" : `**${r.ratio.toFixed(3)}**`,
        `${r.lowrank_first_losses.map((v) => v.toFixed(3)).join(" ")} / ${r.torch_first_losses.map((v) => v.toFixed(3)).join(" ")}`,
        r.skipped ?? (r.backend === "webgpu" ? `${r.device.replace(/^webgpu \(/, "").slice(0, 40)}…` : productNote(r)),
      ]),
    ),
  );
  if (p.profiles.length) {
    out.push(
      "",
      "### Where Lowrank's CPU step goes (profiling proxy over the backend, `benchmarks/src/profile.ts`)",
      "",
      'Each backend call timed by op; "host" = the step minus all kernel time (autograd bookkeeping, views, scopes, loader, optimizer orchestration). Profiled in the same run, after one warm-up step.',
      "",
    );
    for (const pr of p.profiles) {
      const top = pr.ops
        .slice(0, 8)
        .map((o) => `${o.op} ${o.pct.toFixed(0)}%${o.gflops ? ` (${o.gflops.toFixed(1)} GFLOP/s)` : ""}`)
        .join(", ");
      const share = (f: (op: string) => boolean) =>
        pr.ops
          .filter((o) => f(o.op))
          .reduce((a, o) => a + o.pct, 0)
          .toFixed(0);
      const isMatmul = (op: string) => op === "matmul" || op === "fused.matmul4bit";
      const isElementwise = (op: string) => /^(unary|binary)\.|^(where|cast|copy|random|full|arange)$/.test(op);
      out.push(
        `- **${pr.shape} ${pr.method}**: ${pr.step_ms.toFixed(0)} ms/step = kernels ${pr.kernel_ms.toFixed(0)} ms + host ${pr.host_ms.toFixed(
          0,
        )} ms; matmuls ${share(isMatmul)}%, elementwise ${share(isElementwise)}%, the rest (fused norm/softmax/loss, concat, reduce, gather) ${share(
          (o) => !isMatmul(o) && !isElementwise(o),
        )}%. Top: ${top}.`,
      );
    }
  }
  return out;
}

/** The `lowrank finetune` check of a peer row: metrics.jsonl's tokens/s on the same shape. */
function productNote(r: PeerResult["results"][number]): string {
  const p = r.product;
  if (!p) return "";
  return "skipped" in p ? `finetune: not run (${p.skipped})` : `\`lowrank finetune\` on this shape: ${int(p.tokens_per_s)} tok/s in metrics.jsonl`;
}

/** The same peer suite with LOWRANK_BLAS=off (WASM SIMD matmul, the browser's path). */
function wasmPeerSection(p: PeerResult, file: string): string[] {
  return [
    "",
    "### Without a BLAS: `LOWRANK_BLAS=off` (WASM SIMD matmul, the path a browser takes)",
    "",
    `Command: \`${p.config.command}\` → \`${rel(
      file,
    )}\`; PyTorch measured again within that run (the table's PyTorch column), so its ratio, too, is within one run.`,
    "",
    table(
      ["model (batch × seq)", "method", "Lowrank tokens/s (wasm)", "PyTorch tokens/s", "ratio"],
      p.results
        .filter((r) => r.backend === "cpu")
        .map((r) => [r.shape, r.method, int(r.lowrank_tokens_per_s), int(r.torch_tokens_per_s), r.ratio === null ? "-" : `**${r.ratio.toFixed(3)}**`]),
    ),
  ];
}

function kernelsSection(k: KernelsResult, file: string): string[] {
  const bs = k.backends.map((b) => b.name);
  const torch = k.torch
    ? `; PyTorch ${k.torch.torch_version} (${k.torch.python}, torch threads ${k.torch.threads}, ${Object.entries(k.torch.env)
        .map(([n, v]) => `${n}=${v}`)
        .join(" ")}) runs the same matmuls in the same run, and "% torch" is each backend's GFLOP/s over PyTorch's`
    : "";
  const pct = (x: number | undefined) => (x === undefined ? "-" : `${x.toFixed(0)}%`);
  const out = [
    "## 4. Kernels",
    "",
    `Command: \`${k.config.command}\` → \`${rel(file)}\` (${mins(
      k.wall_seconds,
    )} wall). Through the Tensor API (output allocation included), median of batches of calls each followed by \`sync()\`. Backends: ${k.backends
      .map((b) => `${b.name} = ${b.device}`)
      .join("; ")}${torch}.`,
    "",
    `Peak per backend = its best square f32 matmul in this run (${bs
      .map((b) => `${b}: ${k.peak[b].gflops.toFixed(2)} GFLOP/s at ${k.peak[b].from}`)
      .join("; ")}); for reference a JS scalar multiply-add loop on one thread does ${k.scalarLoopGflops.toFixed(
      2,
    )} GFLOP/s. Attention FLOPs count QKᵀ and PV over the full T×T (fwd+bwd = 3× fwd); the CPU kernel skips most of the masked half (blocks of 64 query rows), so its figure is an effective rate.`,
    "",
    "The LoRA A/B rows (target: 50% of the peak) are 4 MFLOP products that run on one thread by design: waking a second thread costs more than it saves at this size (OpenBLAS's own threads and the WASM worker pool both measured slower), so their ceiling is one core against a two-thread peak, and one core's best here is about half of it. On the WASM path the 1 MiB operand is also copied into the kernel's heap, which takes about as long as the arithmetic. Inside a d256 training step the same shapes read operands that are no longer in cache and run at 15-60 GFLOP/s (timed per shape over a step); what pays there is fewer passes over the activations, not a faster thin kernel.",
    "",
    table(
      ["kernel", "case", ...(k.torch ? ["PyTorch GFLOP/s"] : []), ...bs.flatMap((b) => [`${b} GFLOP/s`, `${b} % peak`, ...(k.torch ? [`${b} % torch`] : [])])],
      k.rows.map((r) => [
        r.kernel,
        r.name,
        ...(k.torch ? [r.torch ? r.torch.gflops.toFixed(2) : "-"] : []),
        ...bs.flatMap((b) => {
          const x = r.results[b];
          return x ? [x.gflops.toFixed(2), pct(x.pctPeak), ...(k.torch ? [pct(x.pctTorch)] : [])] : ["-", "-", ...(k.torch ? ["-"] : [])];
        }),
      ]),
    ),
  ];
  for (const s of k.skipped) out.push("", `Skipped: ${s.backend}: ${s.reason}`);
  return out;
}

/** Section 7: the newest results/gpu-<date>.json from a real GPU, or the plain statement that none exists. */
export function gpuSection(g: GpuResult | null, file: string | null): string[] {
  const out = ["## 7. GPU: the WebGPU path on GPU hardware", ""];
  const how =
    "`benchmarks/gpu/pack.sh` builds the runtime a bare machine needs (`.gpu-bundle/`), then `bash benchmarks/gpu/run.sh` runs `lowrank bench gpu` there in under 8 minutes (benchmarks/gpu/README.md has the exact device call)";
  if (!g || !file || !g.adapter) {
    out.push(
      `**No GPU figure exists yet.** No GPU machine was lent to the task that built this benchmark, so nothing here was measured on GPU hardware; the script is ready: ${how}. Until its JSON (\`results/gpu-<date>.json\`, the device named) is committed, WebGPU figures elsewhere in this report come from lavapipe, a software rasterizer on the CPU, and say nothing about GPU speed.`,
    );
    if (g && file)
      out.push(
        "",
        `\`${rel(file)}\` exists but found no WebGPU adapter: ${g.cases.find((c) => c.skipped?.startsWith("no WebGPU"))?.skipped ?? "see the file"}.`,
      );
    return out;
  }
  const a = g.adapter;
  const setup = g.setup ?? {};
  const m = (c: GpuCase, k: string, d = 1) => (typeof c.metrics?.[k] === "number" ? (c.metrics[k] as number).toFixed(d) : "-");
  const ok = (sec: GpuCase["section"]) => g.cases.filter((c) => c.section === sec && c.status === "ok");
  out.push(
    `Command: \`${g.config.command}\` (via benchmarks/gpu/run.sh) → \`${rel(file)}\` (${mins(g.wall_seconds)} wall${
      g.finished ? "" : ", **stopped at its time limit**"
    }). Adapter: **${a.name}**${a.f16 ? " (shader-f16)" : ""}; ${setup["nvidia-smi"] ? `nvidia-smi: ${setup["nvidia-smi"]}; ` : ""}runtime: ${
      setup.runtime ?? g.config.machine.runtime
    }; Vulkan loader: ${setup["vulkan-loader"] ?? "-"}.`,
    "",
    a.peak
      ? `Peak (published, dense): ${a.peak.device}: FP32 ${a.peak.fp32} TFLOP/s, FP16 without tensor cores ${a.peak.fp16}, FP16 tensor cores ${a.peak.fp16Tensor} (WGSL cannot reach tensor cores). Source: ${a.peak.source}.`
      : "Peak: no entry for this adapter in PEAKS (benchmarks/src/gpu.ts), so no % of peak.",
  );
  const conf = g.cases.find((c) => c.section === "conformance");
  if (conf)
    out.push(
      "",
      `Conformance suite: ${
        conf.status === "ok"
          ? `${m(conf, "passed", 0)} of ${m(conf, "total", 0)} passed, ${m(conf, "failed", 0)} failed, ${m(conf, "not_run", 0)} not run`
          : conf.skipped ?? conf.error
      }.`,
    );
  out.push(
    "",
    table(
      ["kernel case", "GFLOP/s", "% of peak", "ms", "note"],
      ok("kernels").map((c) => [
        c.id,
        m(c, "gflops"),
        m(c, "pct_peak", 2),
        m(c, "ms", 3),
        c.metrics?.over_dense != null
          ? `${m(c, "over_dense", 2)}x the dense matmul`
          : c.metrics?.pct_tensor_peak != null
          ? `${m(c, "pct_tensor_peak", 2)}% of the tensor-core peak`
          : "",
      ]),
    ),
  );
  out.push(
    "",
    table(
      ["training row", "tokens/s", "step ms", "peak MiB", "dispatches / submits / host reads per step", "timed steps", "loss first → last"],
      ok("training").map((c) => [
        c.id,
        m(c, "tokens_per_s", 0),
        m(c, "step_ms", 0),
        typeof c.metrics?.peak_bytes === "number" ? fmtMiB(c.metrics.peak_bytes) : "-",
        c.metrics?.dispatches_per_step != null ? `${m(c, "dispatches_per_step", 0)} / ${m(c, "submits_per_step", 0)} / ${m(c, "reads_per_step", 0)}` : "-",
        m(c, "timed_steps", 0),
        `${m(c, "first_loss", 3)} → ${m(c, "last_loss", 3)}`,
      ]),
    ),
  );
  const rest = g.cases.filter((c) => c.status !== "ok");
  if (rest.length) out.push("", ...rest.map((c) => `- ${c.status}: ${c.id}: ${c.skipped ?? c.error}`));
  return out;
}

interface StepCounts {
  dispatches: number;
  submits: number;
  reads: number;
  copies: number;
  byKernel?: Record<string, number>;
  commit?: string;
}
interface WebGpuSteps {
  command?: string;
  adapter?: string;
  step?: StepCounts & { shape: string; method: string; batch: number; seq: number };
  stepBefore?: StepCounts;
}

/** Dispatches and host syncs of one WebGPU training step (benchmarks/src/webgpu.ts), against the count before issue 14's work. */
function dispatchSection(w: WebGpuSteps | null, file: string | null): string[] {
  if (!w?.step || !file) return [];
  const s = w.step,
    b = w.stepBefore;
  const top = Object.entries(s.byKernel ?? {})
    .sort((x, y) => y[1] - x[1])
    .slice(0, 6)
    .map(([k, n]) => `${k} ${n}`)
    .join(", ");
  const row = (label: string, c: StepCounts) => [label, c.dispatches, c.copies, c.submits, c.reads];
  return [
    "",
    "### Dispatches and host syncs per training step (WebGPU, lavapipe)",
    "",
    `\`${w.command ?? "node --import tsx src/webgpu.ts"}\` → \`${rel(file)}\`: a ${s.shape} ${s.method} step at batch ${s.batch} × ${
      s.seq
    }, counted by the engine (counts do not depend on the adapter's speed).`,
    "",
    table(["", "dispatches", "copies", "submits", "host reads"], [...(b ? [row(`before (${b.commit ?? "earlier"})`, b)] : []), row("now", s)]),
    "",
    `${
      b
        ? `${(b.dispatches / s.dispatches).toFixed(2)}x fewer dispatches (issue 14 asks for at least 3x: ${
            b.dispatches / s.dispatches >= 3 ? "met" : "not met"
          }). `
        : ""
    }Top kernels now: ${top}. ` +
      "The fused LoRA layer (lora_*: two dispatches forward and two backward per adapted linear) replaced the base matmul, dropout, scaling, " +
      "branch matmuls and gradient sums of the composite.",
  ];
}

/** The `lowrank plan` command that gives the same estimate as a models row, when a preset has the row's exact shape. */
function planCommand(m: ModelsResult["models"][number], method: string, c: ModelsResult["config"]): string | null {
  const { shape, how } = planShapeFor(m.params);
  const same = (["vocab", "dim", "layers", "heads", "kvHeads", "hidden", "tied"] as const).every((k) => shape[k] === m.shape[k]);
  return same && how.startsWith(m.name)
    ? `lowrank plan --params ${Number((m.params / 1e9).toPrecision(3))}e9 --method ${method} --rank ${c.rank} --seq-len ${c.seq} --batch-size ${c.batch}`
    : null;
}

/** Section 8: real model shapes (`lowrank bench models`): load, step, peak vs plan, adapter check, generation. */
export function modelsSection(r: ModelsResult, file: string): string[] {
  const c = r.config;
  const mib = (b: number | undefined) => (b === undefined ? "-" : fmtMiB(b));
  const s = (x: number | undefined, d = 1) => (x === undefined ? "-" : x.toFixed(d));
  const ratios = r.models.flatMap((m) => m.runs.map((x) => x.peak_vs_plan).filter((x): x is number => x !== undefined));
  const maxRss = Math.max(0, ...r.models.flatMap((m) => m.runs.map((x) => x.max_rss_bytes ?? 0)));
  const out = [
    "## 8. Real model shapes: SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B (`lowrank bench models`)",
    "",
    `Command: \`${c.command}\` → \`${rel(file)}\` (${mins(r.wall_seconds)} wall; ${c.machine.cpu}, ${
      c.machine.cores
    } cores, load average ${c.machine.loadavg1.toFixed(2)} at the start; CPU backend). Each model's real \`config.json\` (data dir \`configs/\`${
      c.quick ? "; **shrunk by --quick** to 2 layers, vocab 512, head size 8" : ""
    }) is written with random weights as the Hub publishes checkpoints: **bf16, ${
      r.models[0]?.checkpoint.shards ?? "-"
    } shards and \`model.safetensors.index.json\`**, in a temporary directory removed afterwards. Then per method, on a fresh backend: \`loadHfModel\` (bf16 widened to f32, the trainer's compute dtype), the trainer's \`prepareModel\` (QLoRA: NF4 + double quant, activations recomputed), ${
      c.steps
    } AdamW steps of ${c.batch} × ${c.seq} synthetic tokens (r=${c.rank}, alpha ${c.alpha}, ${c.targets}, dropout ${
      c.dropout
    }), the PEFT adapter saved and checked, and ${c.generateTokens} greedy tokens generated with the KV cache.`,
    "",
    "load s = the checkpoint read and converted (the shards were just written, so they come from the page cache); prepare s = applying the method (QLoRA: quantizing every linear but the head); step s = the median of the steps after the first (the first creates AdamW's state; all are in the JSON); peak = the largest per-step `backend.memory().peakBytes` (everything live on the backend: weights, adapters, gradients, optimizer state, activations); plan = `estimate()` of benchmarks/src/plan.ts, the formula `lowrank plan` prints, for the same shape, method, batch and sequence. adapter = `adapter_model.safetensors`' keys, shapes and dtypes equal to the keys PEFT writes for the config (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` …, built from the config, not from the model) and `adapter_config.json`'s `target_modules` equal to PEFT's expansion of all-linear" +
      (c.peft_reference ? ` and to the real PEFT 0.18.1 file \`${c.peft_reference}\` (SmolLM2, all-linear), with no config key that file lacks.` : "."),
    "",
    table(
      [
        "model",
        "params",
        "bf16 checkpoint",
        "method",
        "load s",
        "prepare s",
        "step s",
        "peak MiB",
        "plan MiB",
        "peak / plan",
        "adapter (keys)",
        "generate tok/s",
      ],
      r.models.flatMap((m) =>
        m.runs.map((x) => [
          `${m.name} (${m.model_type})`,
          `${(m.params / 1e6).toFixed(1)}M`,
          `${fmtMiB(m.checkpoint.bytes)} MiB, ${m.checkpoint.shards} shards`,
          x.method,
          ...(x.load_s === undefined
            ? ["-", "-", "-", "-", "-", "-", `**failed**: ${x.error}`, "-"]
            : [
                s(x.load_s),
                s(x.prepare_s),
                s(x.step_s, 2),
                mib(x.peak_bytes),
                mib(x.plan_bytes),
                x.peak_vs_plan === undefined ? "-" : `**${x.peak_vs_plan.toFixed(3)}**`,
                x.adapter?.ok ? `PEFT's (${x.adapter.keys})` : `**differs**: ${x.error ?? "-"}`,
                x.generate ? x.generate.tokens_per_s.toFixed(1) : "-",
              ]),
        ]),
      ),
    ),
    "",
  ];
  if (ratios.length)
    out.push(
      `Peak / plan ranges from ${Math.min(...ratios).toFixed(4)} to ${Math.max(...ratios).toFixed(
        4,
      )} (target: within 10%). The process's largest resident set over the whole run was ${(maxRss / 2 ** 30).toFixed(
        2,
      )} GiB (the backend's bytes plus the JS heap, the runtime and buffers the allocator had not yet returned).`,
    );
  const notes = r.models.filter((m) => m.plan_notes.length).map((m) => `${m.name}: ${m.plan_notes.join("; ")}`);
  if (notes.length) out.push("", `Plan vs model: ${notes.join(". ")}.`);
  const cmds = r.models.map((m) => planCommand(m, "qlora", c)).filter((x): x is string => x !== null);
  if (cmds.length) out.push("", `The same estimate from the command line: ${cmds.map((x) => `\`${x}\``).join(", ")} (and \`--method lora\`).`);
  out.push(
    "",
    `Target modules written: ${[...new Set(r.models.flatMap((m) => m.runs.map((x) => JSON.stringify(x.adapter?.target_modules ?? []))))].join(
      " / ",
    )} (PEFT writes the full module names when all-linear finds fewer than 20 linears, the minimal suffixes from 20 on).`,
  );
  return out;
}

interface UploadMemoryResult {
  command: string;
  adapter_bytes: number;
  rank: number;
  status: number;
  seconds: number;
  rss_before_kib: number;
  rss_peak_kib: number;
  rss_after_kib: number;
  pass: boolean;
}

interface BatchingResult {
  command: string;
  max_tokens: number;
  rounds: number;
  /** 1-minute load average at the start and the end (runs from 2026-12-03 on). */
  load_average?: [number, number];
  results: Record<
    string,
    {
      tokens: number;
      serial_s: number;
      concurrent_s: number;
      speedup: number;
      p50_ms: number;
      p99_ms: number;
      mismatches: string[];
      /** Each round's one-at-a-time / all-at-once ratio, and the server's CPU seconds per mode (runs from 2026-12-03 on). */
      round_speedups?: number[];
      server_cpu?: { serial_s: number; concurrent_s: number; speedup: number } | null;
    }
  >;
  batching: { decode_steps: number; sequence_steps: number; max_batch: number };
  pass: boolean;
}

/** Section 9: the server's continuous batching (apps/server/bench/load.ts --batching), or a plain statement that it was not measured. */
export function batchingSection(r: BatchingResult | null, file: string | null): string[] {
  const out = ["## 9. Serving: continuous batching across adapters", ""];
  if (!r || !file)
    return [...out, "**Not measured yet.** `node --import tsx apps/server/bench/load.ts --batching --json benchmarks/results/batching-<date>.json` writes it."];
  out.push(
    `Command: \`${r.command}\` → \`${rel(
      file,
    )}\`. \`lowrank serve\` on stories260K (CPU backend) in its own process on loopback; 16 greedy completions (max_tokens ${
      r.max_tokens
    }, the prompts cycled) sent one at a time, then the same 16 at once, ${
      r.rounds
    } rounds alternating the modes. All at once they share each forward step: one base matmul per layer over every sequence, each sequence's LoRA branch from its own adapter, joining prompts prefilled in the same step. Every concurrent answer is compared with its one-at-a-time answer.`,
    "",
    table(
      [
        "adapters",
        "tokens",
        "one at a time tok/s",
        "all at once tok/s",
        "speedup",
        "rounds",
        "server CPU time ratio",
        "concurrent p50 ms",
        "concurrent p99 ms",
        "answers that differ",
      ],
      Object.entries(r.results).map(([k, x]) => [
        k,
        x.tokens,
        (x.tokens / x.serial_s).toFixed(1),
        (x.tokens / x.concurrent_s).toFixed(1),
        `**${x.speedup.toFixed(2)}x**`,
        x.round_speedups ? `${Math.min(...x.round_speedups).toFixed(2)}-${Math.max(...x.round_speedups).toFixed(2)}x` : "-",
        x.server_cpu ? `${x.server_cpu.speedup.toFixed(2)}x` : "-",
        x.p50_ms.toFixed(0),
        x.p99_ms.toFixed(0),
        x.mismatches.length,
      ]),
    ),
    "",
    `Speedup is total one-at-a-time time over total all-at-once time; rounds gives the lowest and highest ratio of a single round, and the server CPU time ratio the same ratio of the CPU seconds the server process spent in each mode, which other work on the machine moves much less than wall time${
      r.load_average ? ` (load average ${r.load_average[0].toFixed(2)} at the start, ${r.load_average[1].toFixed(2)} at the end)` : ""
    }.`,
    "",
    `Server counters over the run: ${r.batching.decode_steps} forward steps carried ${r.batching.sequence_steps} sequence-steps, at most ${
      r.batching.max_batch
    } sequences in one step. Issue 18 asks for 4x with 4 adapters: **${r.pass ? "met" : "not met"}**.`,
  );
  return out;
}

function planSection(): string[] {
  const cmd = (p: number, method: "qlora" | "lora" | "full", rank: number) => {
    const { shape, how } = planShapeFor(p);
    return [
      `$ lowrank plan --params ${p === 70e9 ? "70e9" : p} --method ${method} --rank ${rank}`,
      planText({ shape, method, rank, targets: "all-linear", batch: 1, seq: 512, dropout: 0.05 }, how),
    ].join("\n");
  };
  const tl = PLAN_PRESETS.find((x) => x.name === "TinyLlama-1.1B") as (typeof PLAN_PRESETS)[number];
  const full = estimate({ shape: tl, method: "full", rank: 8, targets: "all-linear", batch: 2, seq: 128, dropout: 0.05 });
  return [
    "## 5. The estimator: `lowrank plan`",
    "",
    "Formula output, not a measurement (the measurements it is checked against are in section 2; `benchmarks/test/plan.test.ts` asserts it stays within 10% of the measured activations and peak on stories260K and stories15M, and within 0.5% for weights, LoRA, gradients and optimizer state). Defaults: batch 1, seq 512, all-linear, dropout 0.05.",
    "",
    "```text",
    cmd(70e9, "qlora", 16),
    "```",
    "",
    `TinyLlama-1.1B (not measured, see section 2) full fine-tuning at batch 2 × 128 would need ${(full.totalBytes / 2 ** 30).toFixed(1)} GiB by the formula.`,
  ];
}

export function writeReport(dir = RESULTS_DIR): string {
  const plotsDir = join(dir, "plots");
  mkdirSync(plotsDir, { recursive: true });
  const files = {
    ranks: latest("ranks", dir),
    memory: latest("memory", dir),
    peer: latest("peer", dir),
    kernels: latest("kernels", dir),
    cpu: latest("cpu", dir),
  };
  const walls = [files.ranks, files.memory, files.peer, files.kernels].map((f) => read<{ wall_seconds?: number }>(f)?.wall_seconds ?? 0);
  const out = [
    "# Lowrank benchmarks",
    "",
    `Generated by \`lowrank bench report\` (benchmarks/src/report.ts) from the newest results file of each suite; every number below is read from the file its section names, made by the command shown. Rerun everything with \`lowrank bench all\` (${mins(
      walls.reduce((a, b) => a + b, 0),
    )} for these four suites here: ${walls.map(mins).join(" + ")}), or one suite with \`lowrank bench <ranks|memory|peer|kernels|cpu|models> [--quick]\`.`,
    "",
    "The machine is a shared 2-vCPU VM whose load varies (its load average is recorded with each run), so absolute speeds move between runs; ratios are measured within one run.",
  ];
  const ranks = read<RanksResult>(files.ranks);
  if (ranks && files.ranks) out.push("", ...ranksSection(ranks, files.ranks, rankPlots(ranks, plotsDir)));
  const mem = read<MemoryResult>(files.memory);
  if (mem && files.memory) out.push("", ...memorySection(mem, files.memory, memoryPlot(mem, plotsDir)));
  const peer = read<PeerResult>(files.peer);
  if (peer && files.peer) out.push("", ...peerSection(peer, files.peer));
  const wasmFile = latest("peer-wasm", dir);
  const wasmPeer = read<PeerResult>(wasmFile);
  if (wasmPeer && wasmFile) out.push(...wasmPeerSection(wasmPeer, wasmFile));
  const k = read<KernelsResult>(files.kernels);
  if (k && files.kernels) out.push("", ...kernelsSection(k, files.kernels));
  out.push("", ...planSection());
  const gpuFile = latest("gpu", dir);
  if (files.cpu)
    out.push(
      "",
      "## 6. CPU engine and op benchmarks",
      "",
      `\`lowrank bench cpu\` runs \`benchmarks/src/run.ts\` (matmul engine and per-op throughput); newest: \`${rel(files.cpu)}\`. See benchmarks/README.md.`,
    );
  out.push("", ...gpuSection(read<GpuResult>(gpuFile), gpuFile));
  const webgpuFile = latest("webgpu", dir);
  out.push(...dispatchSection(read<WebGpuSteps>(webgpuFile), webgpuFile));
  const modelsFile = latest("models", dir);
  const models = read<ModelsResult>(modelsFile);
  if (models && modelsFile) out.push("", ...modelsSection(models, modelsFile));
  const batchingFile = latest("batching", dir);
  out.push("", ...batchingSection(read<BatchingResult>(batchingFile), batchingFile));
  const uploadFile = latest("upload-memory", dir);
  const upload = read<UploadMemoryResult>(uploadFile);
  if (upload && uploadFile) {
    const gib = (kib: number) => (kib / 2 ** 20).toFixed(3);
    out.push(
      "",
      "### A large adapter upload",
      "",
      `\`${upload.command}\` → \`${rel(uploadFile)}\`: a ${(upload.adapter_bytes / 2 ** 30).toFixed(3)} GiB adapter (rank ${
        upload.rank
      }, on a one-layer base of Llama-7B's width) uploaded to \`lowrank serve\` in ${upload.seconds.toFixed(1)} s (HTTP ${upload.status}). ` +
        `The server's resident set: ${gib(upload.rss_before_kib)} GiB before, ${gib(upload.rss_peak_kib)} GiB at most, ${gib(
          upload.rss_after_kib,
        )} GiB after (issue 18: a rise under 1.5 GiB, given back afterwards: **${
          upload.pass ? "met" : "not met"
        }**). The upload streams to disk and is checked there in 4 MiB reads.`,
    );
  }
  const report = join(dir, "REPORT.md");
  writeFileSync(report, `${out.join("\n")}\n`);
  return report;
}
