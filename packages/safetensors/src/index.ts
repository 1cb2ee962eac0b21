export { DTYPES, type Dtype, type TypedArray, type TypedArrayFor, dtypeSize, isDtype, toTypedArray } from "./dtype.ts";
export { SafetensorsError, type SafetensorsErrorCode } from "./errors.ts";
export { DEFAULT_MAX_HEADER_BYTES, type TensorInfo } from "./header.ts";
export { type OpenOptions, SafetensorsFile, type TensorData, type TensorReader, openFromSource, openSafetensors } from "./reader.ts";
export { type ByteSource, type SafetensorsSource, blobSource, bytesSource } from "./source.ts";
export {
  type LazyTensorInput,
  type TensorDataSource,
  type TensorInput,
  type TensorMap,
  type WriteOptions,
  serializeSafetensors,
  writeSafetensors,
} from "./writer.ts";
export {
  ShardedSafetensors,
  type ShardedOpenOptions,
  type ShardedTensorInfo,
  type ShardedWriteOptions,
  openShardedSafetensors,
  writeShardedSafetensors,
} from "./sharded.ts";
export {
  type FileStorage,
  type FileStat,
  type ReadHandle,
  type WriteHandle,
  setStorage,
  storage,
  exists,
  memoryStorage,
  joinPath,
  normalizePath,
  dirname,
  basename,
  isAbsolutePath,
} from "./storage.ts";
