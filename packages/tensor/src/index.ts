export type { AdamWHyper, Backend, BinaryOp, FusedKernels, FusedName, Input, MemoryStats, Quant4bitInputs, ReduceOp, UnaryOp, View } from "./backend.ts";
export { FUSED_PAIRS, checkFusedPairs } from "./backend.ts";
export * from "./dtype.ts";
export * from "./shape.ts";
export { hash32, uniformAt, Rng, drawCounter, type CounterStream } from "./random.ts";
export { Tensor, tensor, full, zeros, ones, arange, rand, setDefaultBackend, getDefaultBackend, fromHandle, type CreateOptions } from "./tensor.ts";
export { noGrad, enableGrad, isGradEnabled, type GradCtx } from "./autograd.ts";
export { recompute } from "./recompute.ts";
export { scope, keep } from "./scope.ts";
export { gradRules, type GradRule } from "./grad.ts";
export { gradRuleTable, registerGradRules } from "./autograd.ts";
export {
  reshape,
  permute,
  transpose,
  expand,
  slice,
  narrow,
  squeeze,
  unsqueeze,
  flatten,
  contiguous,
  copyInto,
  canCopyInto,
  unary,
  binary,
  where,
  cast,
  reduce,
  mean,
  sumTo,
  matmul,
  gather,
  scatterAdd,
  embedding,
  concat,
  stack,
} from "./ops.ts";
export * from "./functional.ts";
export { LOGITS_CHUNK_BYTES, crossEntropyRows, linearCrossEntropyRows, logitsChunkRows } from "./fused.ts";
export { matmul4bit, dequantize4bitWeight, checkQuant4bitWeight, quant4bitTensors, type Quant4bitWeight } from "./quant.ts";
