/** What every route handler can reach. */
import type { ApiKey, KeyStore } from "../auth.ts";
import type { Home } from "../home.ts";
import type { ModelHost } from "../inference/host.ts";
import type { AdmissionOptions } from "../jobs/admission.ts";
import type { JobRunner } from "../jobs/runner.ts";
import type { JobStore } from "../jobs/store.ts";
import type { TokenizerPool } from "../tokenize/pool.ts";
import type { Registry } from "../registry/registry.ts";

export interface Limits {
  /** JSON request bodies (default 1 MiB). */
  maxBodyBytes: number;
  /** Adapter and dataset uploads (default 1 GiB). */
  maxUploadBytes: number;
  /** Dataset uploads and inline data (default 64 MiB): the cap before anything is parsed or tokenized. */
  maxDatasetBytes: number;
  /** Largest max_tokens a request may ask for (default 2048). */
  maxTokens: number;
}

export interface ServerContext {
  home: Home;
  host: ModelHost;
  registry: Registry;
  keys: KeyStore;
  jobs: JobStore;
  runner: JobRunner;
  limits: Limits;
  /** The tokenizer thread: datasets are parsed and tokenized there, off the event loop. */
  tokens: TokenizerPool;
  /** Fine-tuning admission: the planned-memory budget per job and the queue bound. */
  admission: AdmissionOptions;
  startedAt: number;
  log: (line: string) => void;
  /** Error messages pass through this before they reach a client: server paths become their last component. */
  redact: (message: string) => string;
}

export type AppEnv = { Variables: { key: ApiKey } };
