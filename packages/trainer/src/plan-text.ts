/**
 * What `lowrank plan` prints around the estimate (plan.ts): the known shapes a parameter count
 * picks from, the shape for a count, and the text. Here rather than in the CLI so the benchmarks'
 * report prints the same text.
 */
import { type PlanInput, type PlanShape, estimate, paramsOf } from "./plan.ts";

/** Known shapes, so `--params 70e9` alone picks a real architecture. */
export const PLAN_PRESETS: (PlanShape & { name: string })[] = [
  { name: "stories260K", vocab: 512, dim: 64, layers: 5, heads: 8, kvHeads: 4, hidden: 172, tied: true },
  { name: "stories15M", vocab: 32000, dim: 288, layers: 6, heads: 6, kvHeads: 6, hidden: 768, tied: true },
  { name: "stories42M", vocab: 32000, dim: 512, layers: 8, heads: 8, kvHeads: 8, hidden: 1376, tied: true },
  { name: "stories110M", vocab: 32000, dim: 768, layers: 12, heads: 12, kvHeads: 12, hidden: 2048, tied: true },
  { name: "SmolLM2-135M", vocab: 49152, dim: 576, layers: 30, heads: 9, kvHeads: 3, hidden: 1536, tied: true },
  // Qwen2.5-0.5B's q/k/v biases (27K parameters) are not counted.
  { name: "Qwen2.5-0.5B", vocab: 151936, dim: 896, layers: 24, heads: 14, kvHeads: 2, hidden: 4864, tied: true },
  { name: "TinyLlama-1.1B", vocab: 32000, dim: 2048, layers: 22, heads: 32, kvHeads: 4, hidden: 5632, tied: false },
  { name: "Llama-3.2-1B", vocab: 128256, dim: 2048, layers: 16, heads: 32, kvHeads: 8, hidden: 8192, tied: true },
  { name: "Llama-2-7B", vocab: 32000, dim: 4096, layers: 32, heads: 32, kvHeads: 32, hidden: 11008, tied: false },
  { name: "Llama-3-8B", vocab: 128256, dim: 4096, layers: 32, heads: 32, kvHeads: 8, hidden: 14336, tied: false },
  { name: "Llama-2-13B", vocab: 32000, dim: 5120, layers: 40, heads: 40, kvHeads: 40, hidden: 13824, tied: false },
  { name: "Llama-2-70B", vocab: 32000, dim: 8192, layers: 80, heads: 64, kvHeads: 8, hidden: 28672, tied: false },
];

/**
 * The shape for a parameter count: the nearest preset (by log ratio), unless layers/hidden are
 * given: then the MLP width is solved from the count (Llama layout, 128-wide heads, MHA, vocab 32000).
 */
export function planShapeFor(params: number, layers?: number, hidden?: number): { shape: PlanShape; how: string } {
  if (layers === undefined && hidden === undefined) {
    const p = PLAN_PRESETS.reduce((best, x) => (Math.abs(Math.log(paramsOf(x) / params)) < Math.abs(Math.log(paramsOf(best) / params)) ? x : best));
    const { name, ...shape } = p;
    return { shape, how: `${name} (${humanCount(paramsOf(p))} params), the nearest known shape to ${humanCount(params)}` };
  }
  const near = planShapeFor(params).shape;
  const dim = hidden ?? near.dim;
  const L = layers ?? near.layers;
  const heads = Math.max(1, Math.round(dim / 128));
  const vocab = 32000;
  const attn = 4 * dim * dim;
  const ffn = Math.max(1, Math.round((params - 2 * vocab * dim - L * (attn + 2 * dim)) / (3 * L * dim)));
  return {
    shape: { vocab, dim, layers: L, heads, kvHeads: heads, hidden: ffn, tied: false },
    how: `derived: ${L} layers, hidden ${dim}, MLP ${ffn} solved from the count (MHA, ${heads} heads, vocab ${vocab}, untied)`,
  };
}

function humanCount(n: number): string {
  for (const [d, u] of [
    [1e12, "T"],
    [1e9, "B"],
    [1e6, "M"],
    [1e3, "K"],
  ] as const)
    if (n >= d) return `${Number((n / d).toPrecision(3))}${u}`;
  return `${n}`;
}

const GiB = 2 ** 30;
const fmtBytes = (b: number) => (b >= GiB ? `${(b / GiB).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);

/** The text `lowrank plan` prints. */
export function planText(i: PlanInput, how: string): string {
  const e = estimate(i);
  const s = i.shape;
  const lines = [
    `model: ${how}`,
    `  vocab ${s.vocab}, hidden ${s.dim}, ${s.layers} layers, ${s.heads} heads (${s.kvHeads} kv), MLP ${s.hidden}${
      s.tied ? ", tied head" : ""
    }: ${e.params.toLocaleString("en-US")} params`,
    `method: ${i.method}${
      i.method === "full" ? "" : `, rank ${i.rank}, targets ${i.targets === "all-linear" ? "all-linear" : i.targets.join(",")}, dropout ${i.dropout}`
    }; batch ${i.batch} x seq ${i.seq}; f32 compute, AdamW`,
    `trainable params: ${e.trainable.toLocaleString("en-US")}`,
    "",
    `  weights${i.method === "qlora" ? " (NF4 + double quant, blocksize 64; embeddings, norms, head f32)" : " (f32)"}`.padEnd(80) + fmtBytes(e.weightBytes),
    "  LoRA A/B (f32)".padEnd(80) + fmtBytes(e.loraBytes),
    "  gradients (f32, trainable only)".padEnd(80) + fmtBytes(e.gradBytes),
    "  AdamW state (exp_avg + exp_avg_sq, f32)".padEnd(80) + fmtBytes(e.optimizerBytes),
    "  activations, each layer recomputed in backward".padEnd(80) + fmtBytes(e.activationBytes.recompute),
    "  activations, all kept for backward".padEnd(80) + fmtBytes(e.activationBytes.none),
    "",
    `  total, ${e.recompute ? "with" : "without"} recomputation (${i.recompute === undefined ? `the trainer's default for ${i.method}` : "as asked"})`.padEnd(
      80,
    ) + fmtBytes(e.totalBytes),
    `  total, ${e.recompute ? "without" : "with"} recomputation`.padEnd(80) + fmtBytes(e.totalOtherBytes),
    "",
    "Lowrank trains in f32. The formula is checked against measured steps up to 110M params",
    "(benchmarks/results/REPORT.md section 2: peaks within 4% there; benchmarks/test/plan.test.ts allows 10%).",
  ];
  return lines.join("\n");
}
