/**
 * The memory estimator behind `lowrank plan` (apps/cli/src/plan.ts, with the presets and text of
 * plan-text.ts) and the server's admission check for fine-tuning jobs: bytes a full / LoRA / QLoRA training step needs
 * on Lowrank (f32 compute, AdamW, the trainer's defaults), by category. The formulas follow what
 * this implementation keeps alive, op by op, with the CPU backend's fused kernels (tensor's
 * fused-nn.ts: each gradient rule saves exactly what it names); memory.ts measures the same
 * categories on live storages (the backend's recycled buffers are not counted) and the test
 * compares the two.
 *
 * Saved per decoder layer and token, in f32 elements (C hidden, Ckv = kv heads x head size,
 * H MLP width, nh heads):
 *   attention   x and its rstd (input norm), norm(x) (the q/k/v input), rope(q) and the output
 *               (fused attention: q, k, v contiguous, output, one lse per head and row; no T x T
 *               matrix), rope(k) and v: 2Ckv, lse: nh, the o_proj input (heads merged back): C.
 *               5C + 2Ckv + nh + 1. RoPE saves only its [T, hs/2] cos and sin rows (per layer, not per token).
 *   MLP         h and its rstd, norm(h); fused SwiGLU's gate and up, its output (the down_proj input):
 *               2C + 3H + 1
 *   LoRA        r per adapted Linear (loraBranch saves its [N, r] projection; x, A, B exist anyway;
 *               dropout is regenerated in backward, so it costs nothing). With LoRA nothing before the
 *               first adapter needs a gradient: the first layer's input norm is not recorded.
 * Head and loss: final norm input, output and rstd, logits, cross-entropy's lse and labels (and the
 * embedding's ids, full only), and the logits' gradient V while the loss node still holds the
 * logits (the start of backward, the peak without recomputation). Logits larger than one chunk
 * are never held (linearCrossEntropy): only a chunk's logits and their gradient at a time.
 * With activation recomputation (each layer re-run in backward) only every layer's input C stays; the
 * peak is the head's moment or a re-run layer: its activations plus the MLP backward's gradients,
 * next to the gradients made so far (the first and the last re-run bound it).
 * The optimizer step: the grad norm squares every gradient before summing (a gradient-sized
 * transient); clipping works one gradient at a time and AdamW updates in place (fused, no temporaries).
 * "Activations" is reported as measured: the forward/backward peak minus weights, LoRA,
 * gradients and optimizer state (so for full fine-tuning it nets out gradients not yet made).
 */
import { logitsChunkRows } from "@lowrank/tensor";

/** The shape of a Llama-family model, as the estimate needs it. */
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
  /** LoRA dropout (the trainer's default 0.05); fused, it adds no memory. */
  dropout: number;
  /** Recompute each layer's activations in backward. Default: on for qlora only (the trainer's default). */
  recompute?: boolean;
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
  /** With each layer recomputed in backward, and with every activation kept. */
  activationBytes: { recompute: number; none: number };
  /** Transient of the optimizer step (above weights, LoRA, gradients and state). */
  updateBytes: number;
  recompute: boolean;
  /** Peak of one step with the chosen `recompute`. */
  totalBytes: number;
  /** Same step with `recompute` toggled, for comparison. */
  totalOtherBytes: number;
}

/** Linear layers of one decoder layer: [name, in, out]. */
export function layerLinears(s: PlanShape): [string, number, number][] {
  const hs = s.dim / s.heads;
  const ckv = s.kvHeads * hs;
  return [
    ["q_proj", s.dim, s.dim],
    ["k_proj", s.dim, ckv],
    ["v_proj", s.dim, ckv],
    ["o_proj", s.dim, s.dim],
    ["gate_proj", s.dim, s.hidden],
    ["up_proj", s.dim, s.hidden],
    ["down_proj", s.hidden, s.dim],
  ];
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

/** Activation elements per token one decoder layer saves for backward (see the file comment). */
export function layerActivationElems(s: PlanShape, i: Pick<PlanInput, "method" | "rank" | "targets">): number {
  const hs = s.dim / s.heads;
  const ckv = s.kvHeads * hs;
  const attn = 5 * s.dim + 2 * ckv + s.heads + 1; // x, norm(x), q, output, o_proj input; k, v; lse; rstd
  const mlp = 2 * s.dim + 3 * s.hidden + 1; // h, norm(h); gate, up, swiglu output; rstd
  let lora = 0;
  if (i.method !== "full") for (const [name] of layerLinears(s)) if (isTarget(i.targets, name)) lora += i.rank; // loraBranch's h
  return attn + mlp + lora;
}

/** Trainable elements of one decoder layer, and its down_proj's share (made first in the layer's backward). */
function layerTrainable(s: PlanShape, i: Pick<PlanInput, "method" | "rank" | "targets">): { all: number; down: number; tensors: number } {
  const size = (fin: number, fout: number) => (i.method === "full" ? fin * fout : i.rank * (fin + fout));
  const lins = layerLinears(s).filter(([n]) => i.method === "full" || isTarget(i.targets, n));
  const all = lins.reduce((a, [, fin, fout]) => a + size(fin, fout), 0) + (i.method === "full" ? 2 * s.dim : 0);
  const down = lins.find(([n]) => n === "down_proj");
  return { all, down: down ? size(down[1], down[2]) : 0, tensors: i.method === "full" ? lins.length + 2 : 2 * lins.length };
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
  const full = i.method === "full";
  const recompute = i.recompute ?? i.method === "qlora";
  const fixed = weightBytes + 4 * lora + optimizerBytes;
  const el = 4 * tokens; // bytes per per-token element
  const C = s.dim;
  const lt = layerTrainable(s, i);
  // One layer's saved bytes, plus the [T, hs/2] cos and sin rows RoPE copies for q and for k.
  const layer = el * layerActivationElems(s, i) + 4 * 2 * i.seq * hs;
  const vc = full ? 4 * s.vocab * C : 0; // the head's weight gradient (full only)
  // The loss: linearCrossEntropy (tensor's fused.ts) never holds the logits when they pass one
  // chunk of rows, unless the head is trained and has no more rows than its width.
  const rows = logitsChunkRows(tokens, s.vocab);
  const chunked = rows < tokens && (!full || tokens > C);
  let head: number, headBackward: number;
  if (!chunked) {
    // Head and loss: final norm input, output and rstd, logits, lse and labels (cross-entropy's
    // saved inputs), the ids (the embedding's, full only) and the logits' gradient.
    head = el * (2 * C + 1 + 2 * s.vocab + 2 + (full ? 1 : 0));
    // The loss node released (logits, lse, labels), the head's backward makes the norm output's gradient and its weight's.
    headBackward = head - el * (s.vocab + 2) + el * C + vc;
  } else {
    // Saved: final norm input, output and rstd, lse and labels (and ids). The loss node's backward
    // re-runs the chunks: a chunk's logits and their gradient, h's gradient growing to N·C and
    // concatenated at the end (2·N·C); full: the head's gradient summed chunk by chunk (3·V·C at a sum).
    const cb = 4 * rows * s.vocab;
    const saved = el * (2 * C + 3 + (full ? 1 : 0));
    head = saved + Math.max(2 * cb + el * C + vc, cb + el * C + 3 * vc, 2 * el * C + vc);
    // The loss node released (norm output, lse, labels): the final norm's input and rstd, h's gradient, the head's.
    headBackward = el * (2 * C + 1 + (full ? 1 : 0)) + vc;
  }
  const endOfBackward = gradBytes + (full && s.tied ? 2 * vc : 0); // tied: the embedding's gradient summed into the head's
  // Gradients alive when the head is done: the tied embedding/head matrix (or the untied head) and the final norm's weight.
  const headGrads = full ? vc + 4 * C : 0;
  // The MLP's backward peak above its saved activations. Full: the SwiGLU backward (its output
  // freed) makes the gradients of that output, gate and up: 2H. LoRA on a dense base is one fused
  // node (tensor's loraLinear) whose input gradient is one sum: 2H as well. QLoRA's down_proj
  // (base and branch separate): that output is still saved while its gradient is summed from the
  // base and the adapter: 3H.
  const mlpBack = (i.method !== "qlora" || !isTarget(i.targets, "down_proj") ? 2 : 3) * s.hidden;
  const fbPeak = (again: boolean) => {
    if (!again) {
      // Start of backward: everything saved plus the logits' gradient. With LoRA nothing before the
      // first adapter needs a gradient, so the first layer's input norm is not recorded (x, rstd).
      const all = s.layers * layer - (full ? 0 : el * (C + 1)) + head;
      // Then the last layer's MLP backward: the head freed, its incoming gradient (C) alive.
      const lastMlp = all - head + el * (C + mlpBack) + headGrads + 4 * lt.down;
      return Math.max(all, all - head + headBackward, lastMlp, endOfBackward);
    }
    // Recomputed: each layer's input; the head as above; then layer l (L-1 down to 0) re-run: the
    // inputs of layers 0..l, its saved activations, its output and incoming gradient (2C), and the
    // MLP's backward peak; next to the gradients of the head, the layers above and this layer's
    // down_proj. Linear in l, so the largest is the first or the last re-run.
    const keep = el * s.layers * C;
    const rerun = (l: number) => el * (l + 1) * C + layer - el * C + el * (2 * C + mlpBack) + headGrads + 4 * ((s.layers - 1 - l) * lt.all + lt.down);
    return Math.max(keep + head, keep + headBackward, rerun(s.layers - 1), rerun(0), endOfBackward);
  };
  // Optimizer step: the grad norm squares every gradient before summing them (plus a scalar sum of
  // each and the running total); clipping and the fused AdamW then work in place (clip's g * coef
  // is one gradient, less than those squares).
  const gradTensors = full ? s.layers * lt.tensors + (s.tied ? 2 : 3) : s.layers * lt.tensors;
  const updateBytes = gradBytes + 8 * gradTensors;
  // Reported like the measurement: the forward/backward peak minus the gradients.
  const act = (again: boolean) => fbPeak(again) - gradBytes;
  const total = (again: boolean) => fixed + Math.max(fbPeak(again), gradBytes + updateBytes);
  return {
    params,
    trainable,
    weightBytes,
    loraBytes: 4 * lora,
    gradBytes,
    optimizerBytes,
    activationBytes: { recompute: act(true), none: act(false) },
    updateBytes,
    recompute,
    totalBytes: total(recompute),
    totalOtherBytes: total(!recompute),
  };
}

/** The estimate's shape for a model's config.json fields (Llama-family names). */
export function planShapeOf(c: {
  vocab_size: number;
  hidden_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads?: number;
  intermediate_size: number;
  tie_word_embeddings?: boolean;
}): PlanShape {
  return {
    vocab: c.vocab_size,
    dim: c.hidden_size,
    layers: c.num_hidden_layers,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads ?? c.num_attention_heads,
    hidden: c.intermediate_size,
    tied: c.tie_word_embeddings ?? false,
  };
}
