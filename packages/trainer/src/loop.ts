/**
 * The training loop, flat and explicit (nanoGPT / mlx-examples style):
 *   lr(step) -> gradAccum micro-batches (forward, loss, backward) -> global grad norm ->
 *   skip if not finite -> clip -> optimizer step -> metrics -> eval / checkpoint.
 *
 * The loss of a step is the mean over every target token of all its micro-batches: each
 * micro-batch's summed loss is divided by the step's total target count before backward, so
 * accumulation gives exactly the gradient of one big batch (not a mean of per-batch means).
 */
import type { LlamaForCausalLM } from "@lowrank/nn";
import type { Batch, BatchLoader } from "./data/loader.ts";
import { batchLossSum } from "./evaluate.ts";
import { clipGradients, globalGradNorm } from "./grad-utils.ts";
import type { MetricsLog, Reporter } from "./metrics.ts";
import type { NamedParam, Optimizer } from "./optim.ts";
import { type ScheduleOptions, learningRate } from "./schedule.ts";

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
    let lossSum = 0;
    for (const b of micro) {
      if (!b.targets) continue;
      const sum = batchLossSum(o.model, b);
      const scaled = sum.div(targets);
      scaled.backward();
      lossSum += await sum.item();
      sum.dispose();
      scaled.dispose();
    }
    o.afterBackward?.(step);
    const loss = lossSum / Math.max(1, targets);
    const gradNorm = await globalGradNorm(tensors);
    let skip: string | undefined;
    if (!targets) skip = "no target tokens";
    else if (!Number.isFinite(loss)) skip = `non-finite loss (${loss})`;
    else if (!Number.isFinite(gradNorm)) skip = `non-finite gradient norm (${gradNorm})`;
    if (skip) {
      skipped++;
      consecutive++;
      o.reporter.info(`step ${step + 1}: skipped the update: ${skip}`);
      if (consecutive >= maxSkips) {
        o.optimizer.zeroGrad();
        throw new Error(`training stopped: ${consecutive} consecutive steps had ${skip}; lower --lr or check the data`);
      }
    } else {
      consecutive = 0;
      if (o.maxGradNorm > 0) clipGradients(tensors, o.maxGradNorm, gradNorm);
      o.optimizer.step(lr);
    }
    o.optimizer.zeroGrad();
    o.losses.push(loss);
    const done = step + 1;
    const seconds = (performance.now() - ts) / 1000;
    const tokensPerS = targets / Math.max(1e-9, seconds);
    const peak = backend.memory().peakBytes;
    o.onPeak?.(peak);
    await o.metrics.write({
      step: done, split: "train", loss, lr, grad_norm: gradNorm, tokens_per_s: tokensPerS, peak_bytes: peak,
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
