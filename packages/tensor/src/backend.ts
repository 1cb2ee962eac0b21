import type { DType, HostArray } from "./dtype.ts";

/**
 * A strided window onto a storage, in elements: element `[i0, i1, ...]` lives at
 * `offset + i0*strides[0] + i1*strides[1] + ...`. A stride of 0 broadcasts.
 */
export interface View {
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** What a kernel reads: a backend storage handle, its element type and a view onto it. */
export interface Input<H = unknown> {
  readonly handle: H;
  readonly dtype: DType;
  readonly view: View;
}

export type UnaryOp = "neg" | "exp" | "log" | "sqrt" | "recip" | "sin" | "cos" | "tanh" | "sigmoid" | "abs" | "relu";
export type BinaryOp = "add" | "sub" | "mul" | "div" | "max" | "min" | "pow" | "lt" | "eq";
export type ReduceOp = "sum" | "max";

export interface MemoryStats {
  /** Bytes held by live storages right now. */
  liveBytes: number;
  /** Highest `liveBytes` since creation or the last `resetPeak()`. */
  peakBytes: number;
  /** Number of live storages. */
  liveBuffers: number;
}

/**
 * The closed set of primitives a device implements. Every kernel returns a fresh, contiguous
 * (row-major) storage. Inputs may be strided views (permuted, sliced, broadcast with stride 0).
 * Dispatch is synchronous (work may be queued); only reading back is asynchronous.
 * Gradients are not the backend's concern: they live in the core's gradient table (grad.ts).
 */
export interface Backend<H = unknown> {
  readonly name: string;
  /** Human-readable device description (adapter name, threads, SIMD). */
  readonly device: string;
  /** Element types this backend can store and compute with. */
  readonly dtypes: readonly DType[];

  // ---- memory ----
  upload(data: HostArray, dtype: DType): H;
  read(handle: H, dtype: DType, size: number): Promise<HostArray>;
  /** Synchronous read, only where the device allows it (CPU). */
  readSync?(handle: H, dtype: DType, size: number): HostArray;
  free(handle: H): void;
  /**
   * Copy src's elements into the existing storage dst.handle at dst's view (src and dst of one shape
   * and dtype, not overlapping), in place: every tensor over that storage sees the change. The one
   * primitive that writes into a storage it did not create; a KV cache appends with it instead of
   * concatenating. Optional: without it callers allocate and concatenate.
   */
  copyInto?(dst: Input<H>, src: Input<H>): void;
  memory(): MemoryStats;
  resetPeak(): void;
  /** Wait for queued work (no-op on synchronous devices). */
  sync(): Promise<void>;
  /** Release the device and any threads; the backend is unusable afterwards. */
  dispose(): void;

  // ---- creation ----
  full(size: number, value: number, dtype: DType): H;
  arange(size: number, start: number, step: number, dtype: DType): H;
  /** Uniform [0, 1) from the counter-based hash `uniformAt(seed, offset + i)` (random.ts), f32. */
  random(size: number, seed: number, offset: number): H;

  // ---- elementwise (inputs already broadcast to the output shape) ----
  unary(op: UnaryOp, x: Input<H>): H;
  /** Comparisons (`lt`, `eq`) produce u8; others the input dtype. */
  binary(op: BinaryOp, a: Input<H>, b: Input<H>): H;
  /** `cond` is u8 (non-zero = take `a`). */
  where(cond: Input<H>, a: Input<H>, b: Input<H>): H;
  cast(x: Input<H>, to: DType): H;
  /** Materialise a strided view contiguously. */
  copy(x: Input<H>): H;

  // ---- reductions, movement, indexing, matmul ----
  /** Reduce the last `nReduce` dims of the view; output shape = the leading dims. */
  reduce(op: ReduceOp, x: Input<H>, nReduce: number): H;
  concat(xs: Input<H>[], axis: number): H;
  /** Batched matmul: a [..., M, K] x b [..., K, N] with identical (already broadcast) batch dims. */
  matmul(a: Input<H>, b: Input<H>): H;
  /** torch.gather: out[..i..] = x[..idx[..i..] at `axis`..]; out shape = idx shape; idx is i32. */
  gather(x: Input<H>, idx: Input<H>, axis: number): H;
  /** zeros(shape) then out[..idx[..i..] at axis..] += src[..i..]; idx and src have the same shape. */
  scatterAdd(shape: readonly number[], dtype: DType, idx: Input<H>, src: Input<H>, axis: number): H;

  /** Optional fused kernels for composites (see fused.ts); missing ones fall back to primitives. */
  readonly fused?: Partial<FusedKernels<H>>;
}

/** Fused kernels a backend may provide. All operate on the last axis of contiguous inputs. */
export interface FusedKernels<H = unknown> {
  /** softmax over the last axis of [rows, n]. */
  softmax(x: Input<H>): H;
  /** grad of softmax: gx = y * (gy - sum(gy*y)). */
  softmaxBackward(y: Input<H>, gy: Input<H>): H;
  logSoftmax(x: Input<H>): H;
  logSoftmaxBackward(y: Input<H>, gy: Input<H>): H;
  /** y = x * rsqrt(mean(x^2) + eps) * w over the last axis; also returns rstd [rows] (f32). */
  rmsNorm(x: Input<H>, w: Input<H>, eps: number): { out: H; rstd: H };
  rmsNormBackward(x: Input<H>, w: Input<H>, rstd: Input<H>, gy: Input<H>): { gx: H; gw: H };
  /**
   * The pre-norm block's residual add and the next norm in one pass: h = x + r (x, r contiguous,
   * one shape), out = rmsNorm(h, w, eps) (as rmsNorm), rstd [rows]. h is in x's dtype; for f16/bf16
   * the norm may read h before or after its rounding (within half-precision tolerance). Its
   * backward is rmsNormBackward on h (the add's is the identity).
   */
  addRmsNorm(x: Input<H>, r: Input<H>, w: Input<H>, eps: number): { h: H; out: H; rstd: H };
  /** Per-row loss of logits [rows, V] vs i32 targets [rows]; rows with target == ignoreIndex give 0. Returns loss and logsumexp. */
  crossEntropy(logits: Input<H>, targets: Input<H>, ignoreIndex: number): { loss: H; lse: H };
  /** d loss_row / d logits scaled per row by g [rows]. */
  crossEntropyBackward(logits: Input<H>, targets: Input<H>, lse: Input<H>, g: Input<H>, ignoreIndex: number): H;
  /**
   * 4-bit dequant-matmul with the weight left packed on the device (bitsandbytes layout, see
   * Quant4bitInputs). x is contiguous [rows, K], f32 or f16; the result is [rows, N] in x's dtype.
   * transpose = false: y[r, o] = sum_i x[r, i] * W[o, i]   (K = inFeatures, N = outFeatures; forward)
   * transpose = true:  y[r, i] = sum_o x[r, o] * W[o, i]   (K = outFeatures, N = inFeatures; input gradient)
   * with W[o, i] = f32(code[q(o*in + i)] * absmax(block (o*in + i) / blocksize)). Must agree with
   * dequantize-then-matmul (quant.ts) within f32 rounding. Optional: without it the core dequantizes
   * with primitives.
   */
  matmul4bit?(x: Input<H>, w: Quant4bitInputs<H>, transpose: boolean): H;

  /**
   * A LoRA-wrapped dense linear layer (PEFT lora.Linear over torch.nn.Linear) in two passes:
   *   h = scaling · dropout(x) Aᵀ     [N, r]   (kept for backward)
   *   y = x Wᵀ (+ bias) + h Bᵀ         [N, out]
   * x [N, in], w [out, in], bias [out], a [r, in], b [out, r]: f32, contiguous. `drop` is the
   * `dropout` kernel's mask over x's elements (seed, offset + i); null: no dropout. The base
   * add, the scaling and the mask live inside the matmuls' loads and stores.
   */
  loraLinear(x: Input<H>, w: Input<H>, bias: Input<H> | null, a: Input<H>, b: Input<H>, scaling: number, drop: DropoutParams | null): { y: H; h: H };
  /**
   * Gradients of loraLinear for gy [N, out], the base (w, bias) frozen:
   *   gh = scaling · gy B;  gB = gyᵀ h;  gA = ghᵀ dropout(x);  gx = gy W + dropout(gh A)
   * (dropout's backward is its own mask again, regenerated from (seed, offset)).
   */
  loraLinearBackward(
    x: Input<H>,
    w: Input<H>,
    a: Input<H>,
    b: Input<H>,
    h: Input<H>,
    gy: Input<H>,
    scaling: number,
    drop: DropoutParams | null,
  ): { gx: H; gA: H; gB: H };
  /**
   * Inverted dropout whose mask is a pure function of (seed, offset + i): element i is kept iff
   * uniformAt(seed, offset + i) >= p (random.ts), and kept values are scaled by 1 / (1 - p).
   * x is contiguous; out has x's dtype. Its own backward: the gradient is dropout(g) with the
   * same (p, seed, offset), so no mask is ever stored.
   */
  dropout(x: Input<H>, p: number, seed: number, offset: number): H;
  /** SwiGLU's gate: silu(gate) * up = gate * sigmoid(gate) * up, elementwise over contiguous inputs of one shape. */
  swiglu(gate: Input<H>, up: Input<H>): H;
  /** d/dgate and d/dup of swiglu for output gradient gy (recomputes sigmoid; stores nothing from forward). */
  swigluBackward(gate: Input<H>, up: Input<H>, gy: Input<H>): { gGate: H; gUp: H };
  /**
   * Rotary embedding of x [..., T, D]. x may be any strided view (its strides are honoured: q and k
   * arrive as a head permute of the projection output); out is contiguous in x's logical shape.
   * cos, sin: contiguous f32 [T, D/2] (the table rows for positions offset..offset+T-1).
   * interleaved = false (HF rotate_half): pairs (i, i + D/2); true (llama2.c): pairs (2i, 2i + 1).
   * out[p] = x[p] cos - x[q] sin, out[q] = x[q] cos + x[p] sin.
   */
  rope(x: Input<H>, cos: Input<H>, sin: Input<H>, interleaved: boolean): H;
  /** The transpose of rope (rotation by the negated angle), applied to the contiguous output gradient. */
  ropeBackward(gy: Input<H>, cos: Input<H>, sin: Input<H>, interleaved: boolean): H;
  /**
   * Flash-style scaled dot-product attention, grouped-query aware: q [B, Hq, T, D], k and v
   * [B, Hkv, S, D], all contiguous, Hq % Hkv == 0 (query head h reads kv head floor(h / (Hq / Hkv))).
   * When causal, query t sees keys 0..(S - T + t). Online softmax: no [T, S] score or probability
   * matrix is kept; returns out [B, Hq, T, D] (q's dtype) and lse [B, Hq, T] (f32, the logsumexp of
   * each row of scale * q·kᵀ), which is all the backward needs besides the inputs and out.
   */
  attention(q: Input<H>, k: Input<H>, v: Input<H>, causal: boolean, scale: number): { out: H; lse: H };
  /** Gradients of attention for output gradient gy, recomputing probabilities from lse block by block. */
  attentionBackward(q: Input<H>, k: Input<H>, v: Input<H>, out: Input<H>, lse: Input<H>, gy: Input<H>, causal: boolean, scale: number): { gq: H; gk: H; gv: H };
  /**
   * One AdamW step IN PLACE on f32 storages p, m, v (each `size` elements, contiguous), with f32
   * gradient g (contiguous, `size` elements), torch semantics:
   *   p *= 1 - lr * weightDecay;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²;
   *   p -= (lr / bc1) * m / (sqrt(v) / sqrtBc2 + eps)     with bc1 = 1 - b1^t, sqrtBc2 = sqrt(1 - b2^t).
   * The only kernel that writes into existing storages: an optimizer update has no gradient and
   * must not hold temporaries the size of the parameter.
   */
  adamw(p: H, g: Input<H>, m: H, v: H, size: number, h: AdamWHyper): void;
  /**
   * sum(x²) over every element of every x (float, contiguous), as one f32 storage of 1 element:
   * the global gradient norm's sum in a few dispatches instead of three per tensor. Optional.
   */
  sumSquares?(xs: Input<H>[]): H;
  /**
   * One decode step of N sequences, each over its own KV cache held in place (continuous batching;
   * inference only, no gradient). q [Hq, N, D], kNew and vNew [Hkv, N, D]: sequence i's new query,
   * key and value in row i. ks[i], vs[i]: views [Hkv, C_i, D] onto sequence i's cache storages,
   * whose first lengths[i] < C_i positions are filled. All f32, any strides but a last one of 1.
   * Writes the new key and value at position lengths[i] IN PLACE, then returns out [N, Hq, D]
   * (sequence-major, as the output projection reads it): query i over its lengths[i] + 1 keys,
   * grouped-query (head h reads kv head floor(h / (Hq / Hkv))), softmax(scale · q·kᵀ)·v. Optional:
   * without it each sequence appends with copyInto and attends alone.
   */
  attentionDecode?(q: Input<H>, kNew: Input<H>, vNew: Input<H>, ks: Input<H>[], vs: Input<H>[], lengths: readonly number[], scale: number): H;
  /**
   * A dense linear layer plus several LoRA adapters, each row of x its own (batched multi-adapter
   * serving; inference only): y = x Wᵀ (+ bias) + ((x Aᵀ) ⊙ mask) Bᵀ with the adapters' factors
   * stacked, A [R, in], B [out, R], and mask [N, R] holding each row's scaling on its adapter's block
   * and 0 elsewhere. x [N, in], W [out, in], bias [out]; f32, contiguous. Optional: without it the
   * same ops run one by one.
   */
  loraRows?(x: Input<H>, w: Input<H>, bias: Input<H> | null, a: Input<H>, b: Input<H>, mask: Input<H>): H;
}

/** Inverted dropout of probability p whose mask is the stream (seed, offset + i) (FusedKernels.dropout). */
export interface DropoutParams {
  p: number;
  seed: number;
  offset: number;
}

/** Scalars of one AdamW step (see FusedKernels.adamw). */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1 - beta1^t */
  bc1: number;
  /** sqrt(1 - beta2^t) */
  sqrtBc2: number;
}

/**
 * Forward/backward pairs of the fused set: a backend provides both kernels of a pair or neither
 * (checkFusedPairs; the conformance suite runs it). dropout is its own backward; adamw has none.
 */
export const FUSED_PAIRS: readonly (readonly [keyof FusedKernels, keyof FusedKernels | null])[] = [
  ["softmax", "softmaxBackward"],
  ["logSoftmax", "logSoftmaxBackward"],
  ["rmsNorm", "rmsNormBackward"],
  ["addRmsNorm", "rmsNormBackward"],
  ["crossEntropy", "crossEntropyBackward"],
  ["swiglu", "swigluBackward"],
  ["rope", "ropeBackward"],
  ["attention", "attentionBackward"],
  ["loraLinear", "loraLinearBackward"],
  ["dropout", null],
  ["adamw", null],
  ["matmul4bit", null],
];

/**
 * Throws naming the backend and the kernel when one half of a fused pair is missing: a forward
 * without its backward, or a backward that no forward of the backend uses.
 */
export function checkFusedPairs(b: { name: string; fused?: Partial<FusedKernels<unknown>> }): void {
  const f = b.fused;
  if (!f) return;
  for (const [fwd, bwd] of FUSED_PAIRS) {
    if (bwd && f[fwd] && !f[bwd]) throw new Error(`backend ${b.name}: fused kernel ${fwd} is provided without its pair ${bwd}`);
    if (bwd && f[bwd] && !FUSED_PAIRS.some(([g, h]) => h === bwd && f[g])) {
      throw new Error(`backend ${b.name}: fused kernel ${bwd} is provided without its pair ${fwd}`);
    }
  }
}

/**
 * A frozen 4-bit weight W [outFeatures, inFeatures] as the kernel reads it: bitsandbytes' layout
 * (docs/nf4-format.md), every buffer a contiguous 1-D view. n = outFeatures * inFeatures,
 * nBlocks = ceil(n / blocksize); blocks run over the flattened row-major weight (a block may span rows).
 */
export interface Quant4bitInputs<H = unknown> {
  /** u8 [ceil(n/2)]: element 2j in the high nibble of byte j, element 2j+1 in the low nibble. */
  readonly packed: Input<H>;
  /** f32 [nBlocks] absmax per block; with `nested`, u8 [nBlocks] codes into nested.code. */
  readonly absmax: Input<H>;
  /** f32 [16]: the code table (quant_map), indexed by the 4-bit code. */
  readonly code: Input<H>;
  /**
   * Double quantization: absmax[b] = f32(f32(nested.code[absmax_u8[b]] * nested.absmax[floor(b / nested.blocksize)]) + nested.offset).
   */
  readonly nested?: {
    /** f32 [ceil(nBlocks / blocksize)] */
    readonly absmax: Input<H>;
    /** f32 [256]: the dynamic map (nested_quant_map). */
    readonly code: Input<H>;
    readonly offset: number;
    /** Always 256 in bitsandbytes. */
    readonly blocksize: number;
  };
  /** Elements per block: a power of two in 32..4096 (bitsandbytes' set). */
  readonly blocksize: number;
  readonly outFeatures: number;
  readonly inFeatures: number;
}

export type FusedName = keyof FusedKernels;
