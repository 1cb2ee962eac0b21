export { run, helpText, version, EXIT_OK, EXIT_FAIL, EXIT_USAGE } from "./cli.ts";
export {
  selectBackend,
  resolveChoice,
  probeWebGpu,
  autoChoice,
  BackendError,
  BACKEND_CHOICES,
  isSoftwareAdapter,
  type BackendChoice,
  type BackendSelection,
  type WebGpuProbe,
} from "./backends.ts";
export { resolveDataDir, type DataDir } from "./data-dir.ts";
export { detectRuntime, type Runtime } from "./runtime.ts";
