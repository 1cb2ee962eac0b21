/**
 * The messages between the page (main.ts) and the training worker (worker.ts). The worker owns
 * the backend, the models and the tokenizer; the page only sends settings and renders replies.
 */

export type BackendPref = "auto" | "webgpu" | "cpu";
/** The CPU backend's WASM SIMD build (@lowrank/backend-cpu's `simd` option); "plain" rounds as Node's plain build does. */
export type SimdPref = "auto" | "relaxed" | "plain";
export type Method = "lora" | "qlora" | "full";

export interface BackendInfo {
  kind: "webgpu" | "cpu";
  /** The backend's own description, e.g. "cpu (2 threads, wasm simd)". */
  device: string;
  /** The WebGPU adapter navigator.gpu offered, whether or not it is used. */
  adapter: string | null;
  /** The adapter is a software fallback (e.g. SwiftShader). */
  fallback: boolean;
  /** Why WebGPU is not in use (null when it is, or when the CPU was asked for). */
  note: string | null;
  /** crossOriginIsolated: the CPU matmul may use worker threads. */
  isolated: boolean;
  /** The WASM SIMD build the CPU backend runs ("relaxed": fused multiply-add); null on WebGPU. */
  simd: "relaxed" | "plain" | null;
}

/** Where a model comes from: the copy bundled into the page at build time, or files picked by the user. */
export type ModelSource = { kind: "url"; name: string; base: string } | { kind: "files"; name: string; files: File[] };

export interface ModelInfo {
  name: string;
  params: number;
  layers: number;
  hidden: number;
  vocab: number;
  maxPositions: number;
  /** Linear module names a LoRA target list may use (q_proj, ...). */
  linearNames: string[];
}

export interface TrainSettings {
  text: string;
  /** A name for error messages and format detection (a dropped file's name, or "pasted text"). */
  textName: string;
  method: Method;
  rank: number;
  alpha: number;
  dropout: number;
  targets: string[] | "all-linear";
  steps: number;
  lr: number;
  batchSize: number;
  seqLen: number;
  /** Below 1: a ratio of the steps; else a step count. */
  warmup: number;
  seed: number;
}

export interface MemoryInfo {
  liveBytes: number;
  peakBytes: number;
}

export interface DownloadFile {
  name: string;
  mime: string;
  bytes: Uint8Array;
}

export type Column = "base" | "tuned" | "loaded";

export type ToWorker =
  | { type: "init"; backend: BackendPref; simd: SimdPref }
  | { type: "load-model"; source: ModelSource }
  | { type: "train"; settings: TrainSettings }
  | { type: "cancel" }
  | { type: "generate"; id: number; prompt: string; maxNewTokens: number }
  | { type: "export" }
  | { type: "load-adapter"; files: File[] };

export type FromWorker =
  | { type: "ready"; backend: BackendInfo }
  | { type: "status"; text: string }
  | { type: "model"; info: ModelInfo; memory: MemoryInfo }
  | { type: "train-start"; summary: string; totalSteps: number; train: number; eval: number; tokens: number; warnings: string[] }
  | {
      type: "step";
      step: number;
      total: number;
      loss: number;
      lr: number;
      gradNorm: number;
      tokensPerS: number;
      etaS: number;
      elapsedS: number;
      memory: MemoryInfo;
    }
  | { type: "eval"; when: "before" | "after"; loss: number; perplexity: number }
  | { type: "train-end"; steps: number; seconds: number; cancelled: boolean; memory: MemoryInfo }
  | { type: "generation"; id: number; column: Column; label: string; text: string }
  | { type: "generation-end"; id: number }
  | { type: "exported"; kind: "adapter" | "model"; files: DownloadFile[] }
  | { type: "adapter"; summary: string }
  | { type: "error"; during: string; message: string };
