/**
 * The memory estimator behind `lowrank plan`: bytes a full / LoRA / QLoRA training step needs
 * on Lowrank (f32 compute, AdamW, the trainer's defaults), by category. The formulas follow what
 * this implementation keeps alive, op by op (tensor's gradient table saves exactly the inputs
 * each rule names); memory.ts measures the same categories and the test compares the two.
 *
 * Per decoder layer and token, in f32 elements (C hidden, Ckv = kv heads x head size, H MLP
 * width, nh heads, T sequence length, rep = nh / n_kv):
 *   attention   x, norm(x), q, k, rope(q), o_proj input: 5C + Ckv; k and v as attention reads
 *               them: 2C when GQA copies them to every query head (rep > 1), else rope(k) + v = 2Ckv;
 *               scores (kept by the 1/sqrt(d) scale) and softmax probs: 2 nh T
 *   MLP         h, norm(h): 2C; gate, sigmoid(gate), up, silu(gate), silu*up: 5H
 *   LoRA        per adapted Linear (in -> out, rank r): r + out (the two products), plus 3 in with
 *               dropout > 0 (keep mask, masked input, scaled input: tensor's dropout is x*mask*1/(1-p))
 * Head and loss: final norm input and output 2C, logits V, and the logits' gradient V while the
 * loss node still holds the logits (the start of backward, where the peak is).
 * With gradient checkpointing (each layer re-run in backward) only every layer's input C stays;
 * the peak is then the larger of the head's 2C + 2V and one recomputed layer plus its gradients.
 * The optimizer step is a second peak: AdamW's update of one tensor holds 11 temporaries of its
 * size (m and v terms, sqrt, denominators, the new value) until the tensor is done, so a full
 * fine-tune of a large-vocabulary model peaks there, on the embedding matrix.
 * "Activations" is reported as measured: the forward/backward peak minus weights, LoRA,
 * gradients and optimizer state (so for full fine-tuning it nets out gradients not yet made).
 */

export interface PlanShape {
  vocab: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  hidden: number;
  tied: boolean;
}

export type PlanMethod = "full" | "lora" | "qlora";
export const LINEAR_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] as const;

export interface PlanInput {
  shape: PlanShape;
  method: PlanMethod;
  rank: number;
  /** "all-linear" or module names among LINEAR_TARGETS. */
  targets: "all-linear" | string[];
  batch: number;
  seq: number;
  /** LoRA dropout (the trainer's default 0.05). */
  dropout: number;
  /** Default: on for qlora only (the trainer's default). */
  checkpointing?: boolean;
  /** NF4 blocksize (64) and double quantization (true): QLoRA's base. */
  blocksize?: number;
  doubleQuant?: boolean;
}

export interface PlanEstimate {
  params: number;
  trainable: number;
  /** The model as stored in memory (4-bit base for qlora), plus RoPE tables. */
  weightBytes: number;
  /** LoRA A and B (0 for full). */
  loraBytes: number;
  gradBytes: number;
  /** AdamW exp_avg + exp_avg_sq, f32. */
  optimizerBytes: number;
  activationBytes: { checkpointing: number; none: number };
  /** Transient of the optimizer step (above weights, LoRA, gradients and state). */
  updateBytes: number;
  checkpointing: boolean;
  /** Peak of one step with the chosen checkpointing. */
  totalBytes: number;
  /** Same step with checkpointing toggled, for comparison. */
  totalOtherBytes: number;
}

/** Linear layers of one decoder layer: [name, in, out]. */
export function layerLinears(s: PlanShape): [string, number, number][] {
  const hs = s.dim / s.heads;
  const ckv = s.kvHeads * hs;
  return [["q_proj", s.dim, s.dim], ["k_proj", s.dim, ckv], ["v_proj", s.dim, ckv], ["o_proj", s.dim, s.dim], ["gate_proj", s.dim, s.hidden], ["up_proj", s.dim, s.hidden], ["down_proj", s.hidden, s.dim]];
}

export function paramsOf(s: PlanShape): number {
  const lin = layerLinears(s).reduce((a, [, i, o]) => a + i * o, 0);
  return s.vocab * s.dim * (s.tied ? 1 : 2) + s.layers * (lin + 2 * s.dim) + s.dim;
}

const isTarget = (t: PlanInput["targets"], name: string) => t === "all-linear" || t.includes(name);

/** bitsandbytes' storage of one n-element 4-bit matrix: packed codes, absmax (u8 + nested f32 with DQ), code tables and the quant-state JSON (~200 bytes). */
export function nf4Bytes(n: number, blocksize = 64, doubleQuant = true): number {
  const nb = Math.ceil(n / blocksize);
  const scales = doubleQuant ? nb + 4 * Math.ceil(nb / 256) + 4 * 256 : 4 * nb;
  return Math.ceil(n / 2) + scales + 4 * 16 + 200;
}

/** Activation elements per token of one decoder layer (see the file comment). */
export function layerActivationElems(s: PlanShape, i: Pick<PlanInput, "method" | "rank" | "targets" | "dropout" | "seq">): number {
  const hs = s.dim / s.heads;
  const ckv = s.kvHeads * hs;
  const rep = s.heads / s.kvHeads;
  let n = 5 * s.dim + ckv + (rep > 1 ? 2 * s.dim : 2 * ckv) + 2 * s.heads * i.seq + 2 * s.dim + 5 * s.hidden;
  if (i.method !== "full") {
    for (const [name, fin, fout] of layerLinears(s)) if (isTarget(i.targets, name)) n += i.rank + fout + (i.dropout > 0 ? 3 * fin : 0);
  }
  return n;
}

export function estimate(i: PlanInput): PlanEstimate {
  const s = i.shape;
  const params = paramsOf(s);
  const tokens = i.batch * i.seq;
  const hs = s.dim / s.heads;
  const ropeRows = Math.max(256, 2 ** Math.ceil(Math.log2(i.seq)));
  const rope = 2 * ropeRows * (hs / 2) * 4;
  let weightBytes: number;
  if (i.method === "qlora") {
    const perLayer = layerLinears(s).reduce((a, [, fin, fout]) => a + nf4Bytes(fin * fout, i.blocksize, i.doubleQuant), 0);
    const dense = s.vocab * s.dim * (s.tied ? 1 : 2) + s.layers * 2 * s.dim + s.dim;
    weightBytes = s.layers * perLayer + 4 * dense + rope;
  } else weightBytes = 4 * params + rope;
  let lora = 0;
  if (i.method !== "full") for (const [name, fin, fout] of layerLinears(s)) if (isTarget(i.targets, name)) lora += i.rank * (fin + fout);
  lora *= s.layers;
  const trainable = i.method === "full" ? params : lora;
  const gradBytes = 4 * trainable;
  const optimizerBytes = 8 * trainable;
  const layerElems = layerActivationElems(s, i);
  const full = i.method === "full";
  const checkpointing = i.checkpointing ?? i.method === "qlora";
  const fixed = weightBytes + 4 * lora + optimizerBytes;
  const el = 4 * tokens; // bytes per per-token element
  const nv = el * s.vocab; // logits, or their gradient
  const vc = full ? 4 * s.vocab * s.dim : 0; // the head's weight gradient (full only)
  const head = el * (2 * s.dim) + 2 * nv; // final norm in/out, logits and their gradient
  // Forward/backward peak above the fixed bytes: the largest of these moments.
  const endOfBackward = gradBytes + (full && s.tied ? 2 * vc : 0); // tied: the embedding's gradient summed into the head's
  const fbPeak = (ckpt: boolean) => {
    if (!ckpt) {
      const all = el * s.layers * layerElems + head; // start of backward: everything saved + the logits' gradient
      return Math.max(all, all - nv + vc, endOfBackward); // then the head's backward frees the logits, makes its weight gradient
    }
    // Checkpointed: every layer's input, then the loss as above, then each layer recomputed; inside its
    // backward the softmax gradient and the input's gradient (2 nh T) sit next to the attention
    // activations once the MLP's are freed. The last layer re-run has nearly every gradient made.
    const keep = el * s.layers * s.dim;
    const attnPeak = layerElems - mlpElems(s, i) + 2 * s.heads * i.seq + 2 * s.dim;
    const layer = el * Math.max(layerElems + 2 * s.dim, attnPeak);
    return Math.max(keep + head, keep + head - nv + vc, keep + layer + gradBytes, endOfBackward);
  };
  // Optimizer step: the grad norm squares every gradient at once; AdamW holds 11 temporaries of
  // the tensor it is updating.
  const largest = full
    ? Math.max(s.vocab * s.dim, ...layerLinears(s).map(([, a, b]) => a * b))
    : Math.max(...layerLinears(s).filter(([n]) => isTarget(i.targets, n)).map(([, a, b]) => i.rank * Math.max(a, b)));
  const updateBytes = Math.max(gradBytes, 4 * 11 * largest);
  // Reported like the measurement: the forward/backward peak minus the gradients.
  const act = (ckpt: boolean) => fbPeak(ckpt) - gradBytes;
  const total = (ckpt: boolean) => fixed + Math.max(fbPeak(ckpt), gradBytes + updateBytes);
  return {
    params, trainable, weightBytes, loraBytes: 4 * lora, gradBytes, optimizerBytes,
    activationBytes: { checkpointing: act(true), none: act(false) }, updateBytes, checkpointing,
    totalBytes: total(checkpointing), totalOtherBytes: total(!checkpointing),
  };
}

/** The MLP's share of layerActivationElems (freed first in backward). */
function mlpElems(s: PlanShape, i: Pick<PlanInput, "method" | "rank" | "targets" | "dropout">): number {
  let n = 2 * s.dim + 5 * s.hidden;
  if (i.method !== "full") {
    for (const [name, fin, fout] of layerLinears(s).slice(4)) if (isTarget(i.targets, name)) n += i.rank + fout + (i.dropout > 0 ? 3 * fin : 0);
  }
  return n;
}

/** Known shapes, so `--params 70e9` alone picks a real architecture. */
export const PRESETS: (PlanShape & { name: string })[] = [
  { name: "stories260K", vocab: 512, dim: 64, layers: 5, heads: 8, kvHeads: 4, hidden: 172, tied: true },
  { name: "stories15M", vocab: 32000, dim: 288, layers: 6, heads: 6, kvHeads: 6, hidden: 768, tied: true },
  { name: "stories42M", vocab: 32000, dim: 512, layers: 8, heads: 8, kvHeads: 8, hidden: 1376, tied: true },
  { name: "stories110M", vocab: 32000, dim: 768, layers: 12, heads: 12, kvHeads: 12, hidden: 2048, tied: true },
  { name: "SmolLM2-135M", vocab: 49152, dim: 576, layers: 30, heads: 9, kvHeads: 3, hidden: 1536, tied: true },
  { name: "TinyLlama-1.1B", vocab: 32000, dim: 2048, layers: 22, heads: 32, kvHeads: 4, hidden: 5632, tied: false },
  { name: "Llama-2-7B", vocab: 32000, dim: 4096, layers: 32, heads: 32, kvHeads: 32, hidden: 11008, tied: false },
  { name: "Llama-3-8B", vocab: 128256, dim: 4096, layers: 32, heads: 32, kvHeads: 8, hidden: 14336, tied: false },
  { name: "Llama-2-13B", vocab: 32000, dim: 5120, layers: 40, heads: 40, kvHeads: 40, hidden: 13824, tied: false },
  { name: "Llama-2-70B", vocab: 32000, dim: 8192, layers: 80, heads: 64, kvHeads: 8, hidden: 28672, tied: false },
];

/**
 * The shape for a parameter count: the nearest preset (by log ratio), unless layers/hidden are
 * given: then the MLP width is solved from the count (Llama layout, 128-wide heads, MHA, vocab 32000).
 */
export function shapeFor(params: number, layers?: number, hidden?: number): { shape: PlanShape; how: string } {
  if (layers === undefined && hidden === undefined) {
    const p = PRESETS.reduce((best, x) => (Math.abs(Math.log(paramsOf(x) / params)) < Math.abs(Math.log(paramsOf(best) / params)) ? x : best));
    const { name, ...shape } = p;
    return { shape, how: `${name} (${humanCount(paramsOf(p))} params), the nearest known shape to ${humanCount(params)}` };
  }
  const near = shapeFor(params).shape;
  const dim = hidden ?? near.dim;
  const L = layers ?? near.layers;
  const heads = Math.max(1, Math.round(dim / 128));
  const vocab = 32000;
  const attn = 4 * dim * dim;
  const ffn = Math.max(1, Math.round((params - 2 * vocab * dim - L * (attn + 2 * dim)) / (3 * L * dim)));
  return { shape: { vocab, dim, layers: L, heads, kvHeads: heads, hidden: ffn, tied: false }, how: `derived: ${L} layers, hidden ${dim}, MLP ${ffn} solved from the count (MHA, ${heads} heads, vocab ${vocab}, untied)` };
}

export function humanCount(n: number): string {
  for (const [d, u] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]] as const) if (n >= d) return `${Number((n / d).toPrecision(3))}${u}`;
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
    `  vocab ${s.vocab}, hidden ${s.dim}, ${s.layers} layers, ${s.heads} heads (${s.kvHeads} kv), MLP ${s.hidden}${s.tied ? ", tied head" : ""}: ${e.params.toLocaleString("en-US")} params`,
    `method: ${i.method}${i.method === "full" ? "" : `, rank ${i.rank}, targets ${i.targets === "all-linear" ? "all-linear" : i.targets.join(",")}, dropout ${i.dropout}`}; batch ${i.batch} x seq ${i.seq}; f32 compute, AdamW`,
    `trainable params: ${e.trainable.toLocaleString("en-US")}`,
    "",
    `  weights${i.method === "qlora" ? " (NF4 + double quant, blocksize 64; embeddings, norms, head f32)" : " (f32)"}`.padEnd(80) + fmtBytes(e.weightBytes),
    "  LoRA A/B (f32)".padEnd(80) + fmtBytes(e.loraBytes),
    "  gradients (f32, trainable only)".padEnd(80) + fmtBytes(e.gradBytes),
    "  AdamW state (exp_avg + exp_avg_sq, f32)".padEnd(80) + fmtBytes(e.optimizerBytes),
    "  activations, gradient checkpointing".padEnd(80) + fmtBytes(e.activationBytes.checkpointing),
    "  activations, no checkpointing".padEnd(80) + fmtBytes(e.activationBytes.none),
    "",
    `  total, ${e.checkpointing ? "with" : "without"} checkpointing (the trainer's default for ${i.method})`.padEnd(80) + fmtBytes(e.totalBytes),
    `  total, ${e.checkpointing ? "without" : "with"} checkpointing`.padEnd(80) + fmtBytes(e.totalOtherBytes),
    "",
    "Lowrank trains in f32. The formula is checked against measured steps up to 110M params",
    "(benchmarks/results/REPORT.md section 2: peaks within 4% there; benchmarks/test/plan.test.ts allows 10%).",
  ];
  return lines.join("\n");
}
