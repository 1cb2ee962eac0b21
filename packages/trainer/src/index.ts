// @lowrank/trainer: data pipeline, optimizers, schedules, checkpoint/resume, metrics, the training
// loop and run() (one whole fine-tuning run) for full, LoRA and QLoRA. Runtime-free: paths go through
// @lowrank/safetensors' storage; `@lowrank/trainer/node` registers the Node file system.
export {
  run,
  type RunSpec,
  type RunOptions,
  type RunResult,
  type RunStart,
  finetune,
  type FinetuneInput,
  type FinetuneIO,
  type FinetuneResult,
} from "./run.ts";
export {
  resolveConfig,
  resumeFingerprint,
  ConfigError,
  DEFAULTS,
  METHODS,
  OPTIMIZERS,
  MIXED_PRECISION,
  computeDtype,
  type FinetuneConfig,
  type Method,
  type OptimizerName,
  type MixedPrecision,
} from "./config.ts";
export { trainLoop, INIT_LOSS_SCALE, type LossScaler, type LoopOptions, type LoopResult } from "./loop.ts";
export { prepareModel, paramSummary, type PreparedModel } from "./methods.ts";
export { AdamW, SGD, namedParams, type Optimizer, type OptimizerState, type NamedParam, type AdamWOptions, type SgdOptions } from "./optim.ts";
export { learningRate, lrFactor, warmupSteps, SCHEDULERS, type SchedulerName, type ScheduleOptions } from "./schedule.ts";
export { globalGradNorm, gradNormTensor, clipGradients } from "./grad-utils.ts";
export { recomputeLayers, RecomputedLayer, dropoutStreamMap, type DropoutStream } from "./recompute-layers.ts";
export {
  saveCheckpoint,
  loadCheckpoint,
  resolveCheckpoint,
  listCheckpoints,
  restoreParams,
  type TrainerState,
  type SaveParts,
  type SaveOptions,
  type LoadedCheckpoint,
} from "./checkpoint.ts";
export { evaluate, greedySample, type EvalResult } from "./evaluate.ts";
export { batchLossSum } from "./loss.ts";
export { MetricsLog, consoleReporter, silentReporter, clock, type Reporter, type MetricRecord, type TrainRecord, type EvalRecord } from "./metrics.ts";
export { DatasetError, parseJsonRecords, type JsonRecord } from "./data/records.ts";
export { buildDataset, detectFormat, permutation, DATA_FORMATS, DOC_SEPARATOR, type DataFormat, type Dataset, type DatasetOptions } from "./data/dataset.ts";
export { BatchLoader, collate, batchesOf, IGNORE_INDEX, type Batch, type LoaderState } from "./data/loader.ts";
export { encodeLong, encodeDocument, encodeSegments, type Example, type Segment, type EncodeSpec } from "./data/tokenize.ts";
export {
  alpacaPrompt,
  alpacaSegments,
  chatSegments,
  chatPrompt,
  templateSegments,
  chatGenerationPrompt,
  type ChatGenerationPrompt,
  ALPACA_PROMPT,
  ALPACA_PROMPT_WITH_INPUT,
  CHAT_ROLES,
  type ChatMessage,
  type ChatRole,
} from "./data/templates.ts";
export {
  type PlanShape,
  type PlanMethod,
  type PlanInput,
  type PlanEstimate,
  LINEAR_TARGETS,
  layerLinears,
  paramsOf,
  nf4Bytes,
  layerActivationElems,
  estimate,
  planShapeOf,
} from "./plan.ts";
export { PLAN_PRESETS, planShapeFor, planText } from "./plan-text.ts";
