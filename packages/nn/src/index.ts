export {
  Module,
  ModuleList,
  type TensorModule,
  type StateDictReport,
  type LoadStateDictOptions,
  type TensorSpec,
  type ParamOptions,
  type ParamRole,
  type Init,
  placeholderInit,
  randomInit,
} from "./module.ts";
export { Linear, type LinearOptions, Embedding, RMSNorm } from "./layers.ts";
export { KVCache, type KVCacheOptions } from "./kv-cache.ts";
export {
  LlamaForCausalLM,
  LlamaModel,
  LlamaDecoderLayer,
  LlamaAttention,
  LlamaMLP,
  type LlamaConfig,
  type LlamaOptions,
  type LlamaForwardOptions,
  type LayerContext,
  type RopeScaling,
  type LayerType,
  type ModelType,
  SUPPORTED_TYPES,
  parseLlamaConfig,
  llamaConfigToHf,
  ropeInvFreq,
  slidingWindowAttention,
} from "./models/llama.ts";
export {
  loadHfModel,
  loadHfModelFromFiles,
  saveHfModel,
  type LoadOptions,
  type SaveOptions,
  type HfModelFiles,
  type LoadedHfModel,
  type FileBytes,
  type JsonFile,
} from "./loaders/hf.ts";
export { tensorFromBytes, type SourceFloat } from "./loaders/files.ts";
export { type GenerationDefaults, defaultSampling, loadGenerationConfig, parseGenerationConfig } from "./loaders/generation-config.ts";
export { QuantizedLinear, quantDtypeOf, type ComputeDtype, type QuantizedLinearOptions } from "./quantized.ts";
export {
  quantizeModel,
  quantizedMemoryReport,
  quantizationConfigOf,
  setQuantizationConfig,
  matchesModule,
  type QuantizeModelOptions,
  type QuantizeModelReport,
  type QuantizedMemoryReport,
  type QuantizedLayerMemory,
} from "./quantize-model.ts";
export { parseBnbConfig, type BnbConfig } from "./loaders/bnb.ts";
export {
  quantizeHfCheckpoint,
  dequantizeHfCheckpoint,
  type ConvertOptions,
  type ConvertReport,
  type QuantizeCheckpointOptions,
} from "./loaders/bnb-convert.ts";
export { loadLlama2c, llama2cFromBytes, readLlama2cHeader, llama2cConfigJson, permuteRotaryRows, type Llama2cHeader } from "./loaders/llama2c.ts";
export { type TextTokenizer, type EncodeOptions, type DecodeOptions, HfTokenizer, loadTokenizer, tokenizerFromJson, TextStream } from "./loaders/tokenizer.ts";
export { Llama2cTokenizer, loadLlama2cTokenizer } from "./loaders/llama2c-tokenizer.ts";
export { ChatTemplate, chatTemplateFromConfig, commonPrefixLength, SENTINEL, type ChatMessage, type RenderOptions } from "./chat-template.ts";
export { generate, generateIds, streamText, sampleNext, argmax, type CausalLM, type GenerateOptions, type SamplingOptions } from "./generate.ts";
