/**
 * `@lowrank/nn/node`: the package plus what needs a file system or a process (Node, and Bun and
 * Deno through their Node compatibility): the Hugging Face Hub download cache and the data-directory
 * lookup. Importing it registers the Node file system for every path-taking loader (loadHfModel,
 * loadTokenizer, saveHfModel, ...; see @lowrank/safetensors' storage).
 */
import "@lowrank/safetensors/node";

export * from "./index.ts";
export { resolveDataDir, type DataDirOptions } from "./node/data-dir.ts";
export {
  downloadHfModel,
  hubSnapshotDir,
  isHfRepoId,
  isModelFile,
  HubError,
  ChecksumError,
  type DownloadHfModelOptions,
  type HubProgress,
} from "./node/hub.ts";
