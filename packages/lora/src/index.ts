export {
  type LoraConfig,
  type LoraConfigInput,
  type LoraBias,
  LoraConfigError,
  loraConfig,
  loraOptions,
  loraScaling,
  configFromJson,
  configToJson,
  DEFAULT_TARGET_MODULES,
  INCLUDE_LINEAR_LAYERS_SHORTHAND,
  PEFT_FORMAT_VERSION,
} from "./config.ts";
export { type BaseLayer, type QuantizedLinearLike, type RequantizableLinear, isQuantizedLinear, isRequantizable, isLinearLike } from "./base-layer.ts";
export {
  LoraLinear,
  AdapterDict,
  MagnitudeVector,
  dropoutStreamMap,
  type AdapterOptions,
  type MergeOptions,
  type MergeInfo,
  allFinite,
  initialWeights,
} from "./layer.ts";
export { ModulesToSaveWrapper, cloneModule } from "./modules-to-save.ts";
export {
  type TargetPlan,
  type InjectionPlan,
  type PlanOptions,
  planInjection,
  isTargeted,
  patternKey,
  rankFor,
  alphaFor,
  minimalTargetModules,
  layerIndex,
} from "./targets.ts";
export { PeftModel, type PeftOptions, type TrainableCount, getPeftModel, withAdaptersDisabled, formatTrainable, pythonFixed, biasParameters } from "./model.ts";
export { addWeightedAdapter, weightedDelta, type Combination, type WeightedAdapterOptions } from "./weighted.ts";
export {
  saveAdapter,
  loadAdapter,
  readAdapterConfig,
  adapterStateDict,
  sameModelName,
  type SaveAdapterOptions,
  type LoadAdapterOptions,
  adapterToBytes,
  loadAdapterFromBytes,
  type AdapterBytes,
  type AdapterToBytesOptions,
  type AdapterInput,
  type LoadAdapterFromBytesOptions,
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  PEFT_PREFIX,
} from "./peft-io.ts";
export { mergeAndSave, type MergeAndSaveOptions, type MergeAndSaveResult } from "./merge-and-save.ts";
export { svd, svdOfProduct, qrThin, matmulMat, transposeMat, quantile, type Svd } from "./svd.ts";
