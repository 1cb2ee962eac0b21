/**
 * Learning-rate schedules as pure functions of the optimizer step, with Hugging Face's formulas
 * (transformers.optimization): the rate used for update k (0-based) is lr * factor(k), so with
 * warmup the very first update has rate 0, exactly as get_*_schedule_with_warmup gives.
 */
export const SCHEDULERS = ["constant", "linear", "cosine"] as const;
export type SchedulerName = (typeof SCHEDULERS)[number];

export interface ScheduleOptions {
  name: SchedulerName;
  lr: number;
  totalSteps: number;
  warmupSteps: number;
}

export function lrFactor(step: number, o: Omit<ScheduleOptions, "lr">): number {
  const { totalSteps: N, warmupSteps: W } = o;
  if (step < W) return step / Math.max(1, W);
  if (o.name === "constant") return 1;
  const progress = (step - W) / Math.max(1, N - W);
  if (o.name === "linear") return Math.max(0, (N - step) / Math.max(1, N - W));
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}

export function learningRate(step: number, o: ScheduleOptions): number {
  return o.lr * lrFactor(step, o);
}

/** `--warmup`: a value below 1 is a ratio of the total steps (rounded up, like warmup_ratio), else a step count. */
export function warmupSteps(warmup: number, totalSteps: number): number {
  if (!(warmup >= 0) || !Number.isFinite(warmup)) throw new RangeError(`warmup must be a ratio in [0, 1) or a step count, got ${warmup}`);
  if (warmup < 1) return Math.ceil(totalSteps * warmup);
  if (!Number.isInteger(warmup)) throw new RangeError(`warmup of ${warmup} steps is not an integer (a ratio must be below 1)`);
  return warmup;
}
