/**
 * The training loop, flat and explicit (nanoGPT / mlx-examples style):
 *   lr(step) -> gradAccum micro-batches (forward, loss, backward) -> global grad norm ->
 *   skip if not finite -> clip -> optimizer step -> metrics -> eval / checkpoint.
 *
 * The loss of a step is the mean over every target token of all its micro-batches: each
 * micro-batch's summed loss is divided by the step's total target count before backward, so
 * accumulation gives exactly the gradient of one big batch (not a mean of per-batch means).
 *
 * fp16 adds dynamic loss scaling (torch.cuda.amp.GradScaler): the loss is multiplied by the scale
 * before backward so small gradients survive f16; a step whose gradients overflow is skipped and
 * the scale halved; after GROWTH_INTERVAL good steps in a row it doubles. Unscaling and clipping
 * are one pass over the gradients.
 */
import type { LlamaForCausalLM } from "@lowrank/nn";
import { type Tensor, noGrad, stack } from "@lowrank/tensor";
import type { Batch, BatchLoader } from "./data/loader.ts";
import { batchLossSum } from "./loss.ts";
import { gradNormTensor, scaleGradients } from "./grad-utils.ts";
import type { MetricsLog, Reporter } from "./metrics.ts";
import type { NamedParam, Optimizer } from "./optim.ts";
import { type ScheduleOptions, learningRate } from "./schedule.ts";

/** Dynamic loss scale of an fp16 run; the loop updates it in place and checkpoints save it. */
export interface LossScaler {
  scale: number;
  /** Good steps since the last change of scale. */
  goodSteps: number;
}

/** torch GradScaler's defaults. */
export const INIT_LOSS_SCALE = 2 ** 16;
const GROWTH_INTERVAL = 2000;
/** Below this the f16 gradients overflow whatever the scale: stop instead of skipping forever. */
const MIN_LOSS_SCALE = 2 ** -14;

export interface LoopOptions {
  model: LlamaForCausalLM;
  params: readonly NamedParam[];
  optimizer: Optimizer;
  loader: BatchLoader;
  schedule: ScheduleOptions;
  gradAccum: number;
  /** 0 disables clipping. */
  maxGradNorm: number;
  /** Steps already done (a resumed run starts here). */
  startStep: number;
  /** Stop after this step (default schedule.totalSteps; lower to stop early and resume later). */
  stopAt?: number;
  evalEvery: number;
  saveEvery: number;
  evaluate: (step: number) => Promise<void>;
  save: (step: number) => Promise<void>;
  metrics: MetricsLog;
  reporter: Reporter;
  /** Abort after this many consecutive skipped (non-finite) steps (default 5). */
  maxConsecutiveSkips?: number;
  /** Losses of completed steps; the loop appends to it. */
  losses: number[];
  /** Receives each step's peak device bytes. */
  onPeak?: (bytes: number) => void;
  /** fp16: dynamic loss scaling (absent: none). */
  scaler?: LossScaler;
  /** Test hook: change gradients after backward (e.g. inject a NaN). */
  afterBackward?: (step: number) => void;
}

export interface LoopResult {
  steps: number;
  skipped: number;
  seconds: number;
}

export async function trainLoop(o: LoopOptions): Promise<LoopResult> {
  const total = o.schedule.totalSteps;
  const stopAt = Math.min(o.stopAt ?? total, total);
  const backend = o.model.backend;
  const tensors = o.params.map((p) => p.param);
  const maxSkips = o.maxConsecutiveSkips ?? 5;
  let skipped = 0;
  let consecutive = 0;
  const t0 = performance.now();
  o.model.train();
  for (let step = o.startStep; step < stopAt; step++) {
    const ts = performance.now();
    backend.resetPeak();
    const lr = learningRate(step, o.schedule);
    const micro: Batch[] = [];
    for (let i = 0; i < o.gradAccum; i++) micro.push(o.loader.next());
    const targets = micro.reduce((n, b) => n + b.targets, 0);
    const scale = o.scaler?.scale ?? 1;
    // Losses stay on the device: the step's one host sync reads them with the gradient norm.
    const sums: Tensor[] = [];
    for (const b of micro) {
      if (!b.targets) continue;
      const sum = batchLossSum(o.model, b);
      const scaled = scale === 1 ? sum.div(targets) : sum.mul(scale / targets); // fp32 runs keep their exact bytes
      scaled.backward();
      scaled.dispose();
      sums.push(sum);
    }
    o.afterBackward?.(step);
    const [lossSum, rawNorm] = await readStep(sums, gradNormTensor(tensors));
    const loss = lossSum / Math.max(1, targets);
    const gradNorm = rawNorm / scale;
    let skip: string | undefined;
    let overflow = false;
    if (!targets) skip = "no target tokens";
    else if (!Number.isFinite(loss)) skip = `non-finite loss (${loss})`;
    else if (!Number.isFinite(gradNorm)) {
      overflow = !!o.scaler;
      skip = overflow ? `gradients overflow f16 at loss scale ${scale}` : `non-finite gradient norm (${gradNorm})`;
    }
    if (skip) {
      skipped++;
      o.reporter.info(`step ${step + 1}: skipped the update: ${skip}`);
      if (overflow) {
        // The scaler's own back-off, not a failing run, until no scale is small enough.
        const sc = o.scaler as LossScaler;
        sc.scale /= 2;
        sc.goodSteps = 0;
        if (sc.scale < MIN_LOSS_SCALE) {
          o.optimizer.zeroGrad();
          throw new Error(`training stopped: fp16 gradients overflow even at loss scale ${sc.scale * 2}; train with --bf16 or in fp32`);
        }
      } else if (++consecutive >= maxSkips) {
        o.optimizer.zeroGrad();
        throw new Error(`training stopped: ${consecutive} consecutive steps had ${skip}; lower --lr or check the data`);
      }
    } else {
      consecutive = 0;
      // Unscale and clip in one pass: coefficient min(1, maxNorm / (norm + 1e-6)) / scale.
      const clip = o.maxGradNorm > 0 ? Math.min(1, o.maxGradNorm / (gradNorm + 1e-6)) : 1;
      if (clip / scale !== 1) scaleGradients(tensors, clip / scale);
      o.optimizer.step(lr);
      if (o.scaler && ++o.scaler.goodSteps >= GROWTH_INTERVAL) {
        o.scaler.scale *= 2;
        o.scaler.goodSteps = 0;
      }
    }
    o.optimizer.zeroGrad();
    o.losses.push(loss);
    const done = step + 1;
    const seconds = (performance.now() - ts) / 1000;
    const tokensPerS = targets / Math.max(1e-9, seconds);
    const peak = backend.memory().peakBytes;
    o.onPeak?.(peak);
    await o.metrics.write({
      step: done,
      split: "train",
      loss,
      lr,
      grad_norm: gradNorm,
      tokens_per_s: tokensPerS,
      peak_bytes: peak,
      ...(o.scaler ? { loss_scale: scale } : {}),
      ...(skip ? { skipped: skip } : {}),
    });
    const perStep = (performance.now() - t0) / 1000 / (done - o.startStep);
    o.reporter.progress({ step: done, total, loss, tokensPerS, etaS: perStep * (stopAt - done) });
    if (o.evalEvery > 0 && done % o.evalEvery === 0 && done !== total) await o.evaluate(done);
    if (o.saveEvery > 0 && done % o.saveEvery === 0 && done !== total) await o.save(done);
  }
  o.reporter.end();
  return { steps: stopAt - o.startStep, skipped, seconds: (performance.now() - t0) / 1000 };
}

/**
 * One read for a step: the micro-batches' summed losses (added in f64 on the host, in order, as
 * each used to be read) and the gradient norm, as one small device tensor. Frees its inputs.
 */
async function readStep(sums: Tensor[], norm: Tensor | null): Promise<[number, number]> {
  const parts = norm ? [...sums, norm] : sums;
  if (!parts.length) return [0, 0];
  const all = noGrad(() => stack(parts)); // f32 scalars: the losses are f32 (lossSum), and so is the norm
  try {
    const v = await all.read();
    let lossSum = 0;
    for (let i = 0; i < sums.length; i++) lossSum += v[i];
    return [lossSum, norm ? v[sums.length] : 0];
  } finally {
    all.dispose();
    for (const t of parts) t.dispose();
  }
}
