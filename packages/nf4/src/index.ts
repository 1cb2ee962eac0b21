// @lowrank/nf4: bitsandbytes-compatible NF4/FP4 blockwise quantization (pure functions on
// typed arrays). Defaults are NF4 + double quantization, unlike bnb/transformers (fp4).

export {
  codebook,
  createDynamicMap,
  dynamicMap,
  FP4_BUCKET_BITS,
  FP4_MAGNITUDE_THRESHOLDS,
  FP4_RAW,
  FP4_VALUES,
  midpoints,
  NF4_THRESHOLDS,
  NF4_VALUES,
} from "./codebooks.ts";
export type { QuantType } from "./codebooks.ts";
export {
  bitsPerParam,
  dequantize4bit,
  dequantizeAbsmax,
  dequantizeRows,
  isNested,
  NESTED_BLOCKSIZE,
  quantize4bit,
  quantizeAbsmax,
  quantizedBytes,
  VALID_BLOCKSIZES,
} from "./quantize.ts";
export type { NestedAbsmax, QuantDtype, QuantizeOptions, QuantState } from "./quantize.ts";
export { BnbFormatError, bnbQuantizationConfig, fromBnbTensors, quantStateJson, toBnbTensors } from "./bnb-format.ts";
export type { BnbQuantizationConfigOptions, BnbTensor, BnbTensors } from "./bnb-format.ts";
export { pythonFloatRepr, pythonJsonDumps } from "./python-repr.ts";
export type { PyJson } from "./python-repr.ts";
