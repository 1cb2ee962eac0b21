/**
 * Training checkpoints: trainable weights, optimizer state, and the trainer state (step,
 * scheduler step, RNG counters, data position), written atomically: everything goes into a
 * temporary directory that is renamed to `checkpoint-<step>` only when complete, so a kill or a
 * failure mid-save leaves the previous checkpoints untouched.
 *
 *   checkpoint-<step>/
 *     trainable.safetensors | model.safetensors   exact f32 bytes of every trained parameter
 *     optimizer.safetensors                       "<param>.exp_avg", ... (metadata: type, step)
 *     trainer_state.json                          TrainerState
 *     (+ whatever `writeExtra` adds: the PEFT adapter, config.json, tokenizer files)
 */
import { type Tensor, noGrad, scope, tensor } from "@lowrank/tensor";
import { exists, joinPath as join, openSafetensors, storage, writeSafetensors } from "@lowrank/safetensors";
import type { LoaderState } from "./data/loader.ts";
import type { OptimizerState } from "./optim.ts";

export interface TrainerState {
  version: 1;
  /** Optimizer steps taken (the scheduler's step is the same number). */
  global_step: number;
  total_steps: number;
  /** Position in the training data. */
  loader: LoaderState;
  /** Counter-based dropout streams (LoRA layers), by "<module path>:<adapter>". */
  dropout: Record<string, { seed: number; counter: number }>;
  /** The parts of the config a resumed run must share. */
  fingerprint: Record<string, unknown>;
  /** Train losses of every step so far (for the report; resumed runs extend it). */
  losses: number[];
  /** fp16 runs: the dynamic loss scale, so a resumed run continues it. */
  loss_scale?: { scale: number; good_steps: number };
}

export interface SaveParts {
  step: number;
  params: ReadonlyMap<string, Tensor>;
  paramsFile: "trainable.safetensors" | "model.safetensors";
  optimizer: OptimizerState;
  state: TrainerState;
  /** Extra files (a PEFT adapter, config.json), written into the temporary directory too. */
  writeExtra?: (dir: string) => Promise<void>;
}

export interface SaveOptions {
  /** Keep at most this many checkpoint-* directories (0: all). */
  keep?: number;
  /** Test hook: runs after every file is written, before the rename (throw or exit here to simulate a crash). */
  beforeCommit?: (tmpDir: string) => Promise<void> | void;
}

const CKPT = /^checkpoint-(\d+)$/;

/** Write checkpoint-<step> under `outputDir` atomically; returns its path. */
export async function saveCheckpoint(outputDir: string, parts: SaveParts, opts: SaveOptions = {}): Promise<string> {
  const { mkdir, rename, rm, writeFile } = storage();
  await mkdir(outputDir);
  await removeStale(outputDir);
  const final = join(outputDir, `checkpoint-${parts.step}`);
  const tag = Math.random().toString(36).slice(2, 10);
  const tmp = join(outputDir, `.tmp-checkpoint-${parts.step}-${tag}`);
  await rm(tmp);
  await mkdir(tmp);
  try {
    await writeSafetensors(join(tmp, parts.paramsFile), await f32Entries(parts.params), { format: "pt" });
    const opt = new Map([...parts.optimizer.tensors].map(([k, v]) => [k, { dtype: "F32" as const, shape: v.shape, data: v.data }]));
    await writeSafetensors(join(tmp, "optimizer.safetensors"), opt, { format: "pt", type: parts.optimizer.type, step: String(parts.optimizer.step) });
    await writeFile(join(tmp, "trainer_state.json"), `${JSON.stringify(parts.state, null, 1)}\n`);
    await parts.writeExtra?.(tmp);
    await opts.beforeCommit?.(tmp);
    const old = join(outputDir, `.old-checkpoint-${parts.step}-${tag}`);
    const replaced = await rename(final, old).then(
      () => true,
      () => false,
    );
    await rename(tmp, final);
    if (replaced) await rm(old);
  } catch (e) {
    await rm(tmp).catch(() => {});
    throw e;
  }
  if (opts.keep) await prune(outputDir, opts.keep, parts.step);
  return final;
}

async function f32Entries(params: ReadonlyMap<string, Tensor>) {
  const out = new Map<string, { dtype: "F32"; shape: readonly number[]; data: Float32Array }>();
  for (const [name, t] of params) {
    const v = await t.read();
    out.set(name, { dtype: "F32", shape: t.shape, data: v instanceof Float32Array ? v : Float32Array.from(v) });
  }
  return out;
}

/** Leftovers of saves that were killed (a dead run's temp dir is never committed). */
async function removeStale(outputDir: string): Promise<void> {
  const { readdir, rm } = storage();
  for (const name of await readdir(outputDir).catch(() => [] as string[])) {
    if (name.startsWith(".tmp-checkpoint-") || name.startsWith(".old-checkpoint-")) await rm(join(outputDir, name));
  }
}

async function prune(outputDir: string, keep: number, newest: number): Promise<void> {
  const { rm } = storage();
  const steps = (await listCheckpoints(outputDir)).filter((s) => s !== newest);
  const excess = steps.length + 1 - keep;
  for (const s of steps.slice(0, Math.max(0, excess))) await rm(join(outputDir, `checkpoint-${s}`));
}

/** Steps of the complete checkpoints in a directory, ascending. */
export async function listCheckpoints(outputDir: string): Promise<number[]> {
  const names = await storage()
    .readdir(outputDir)
    .catch(() => [] as string[]);
  return names
    .map((n) => CKPT.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

/** `path` itself when it is a checkpoint, else its latest checkpoint-* (an output dir). */
export async function resolveCheckpoint(path: string): Promise<string> {
  if (await exists(join(path, "trainer_state.json"))) return path;
  const steps = await listCheckpoints(path);
  if (!steps.length) throw new Error(`${path}: not a checkpoint (no trainer_state.json) and no checkpoint-* inside`);
  return join(path, `checkpoint-${steps[steps.length - 1]}`);
}

export interface LoadedCheckpoint {
  dir: string;
  state: TrainerState;
  optimizer: OptimizerState;
  params: Map<string, { shape: number[]; data: Float32Array }>;
}

export async function loadCheckpoint(path: string): Promise<LoadedCheckpoint> {
  const dir = await resolveCheckpoint(path);
  const state = JSON.parse(await storage().readText(join(dir, "trainer_state.json"))) as TrainerState;
  if (state.version !== 1) throw new Error(`${dir}/trainer_state.json: unknown version ${state.version}`);
  const paramsFile = (await exists(join(dir, "trainable.safetensors"))) ? "trainable.safetensors" : "model.safetensors";
  const params = await readF32(join(dir, paramsFile));
  const optFile = await openSafetensors(join(dir, "optimizer.safetensors"));
  const meta = optFile.metadata;
  await optFile.close();
  const type = meta.type;
  if (type !== "adamw" && type !== "sgd") throw new Error(`${dir}/optimizer.safetensors: unknown optimizer type ${JSON.stringify(type)}`);
  const optimizer: OptimizerState = { type, step: Number(meta.step), tensors: await readF32(join(dir, "optimizer.safetensors")) };
  return { dir, state, optimizer, params };
}

async function readF32(path: string): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const f = await openSafetensors(path);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  try {
    for (const name of f.names) {
      const t = await f.read(name);
      if (t.dtype !== "F32") throw new Error(`${path}: tensor "${name}" is ${t.dtype}, expected F32`);
      const bytes = t.data.slice(); // own, aligned copy
      out.set(name, { shape: [...t.shape], data: new Float32Array(bytes.buffer, 0, bytes.byteLength / 4) });
    }
  } finally {
    await f.close();
  }
  return out;
}

/** Put saved values into the live parameters (same objects, via assign); every trained name must be present. */
export function restoreParams(params: ReadonlyMap<string, Tensor>, saved: ReadonlyMap<string, { shape: number[]; data: Float32Array }>, source: string): void {
  const problems: string[] = [];
  for (const [name, t] of params) {
    const s = saved.get(name);
    if (!s) problems.push(`missing: ${name}`);
    else if (s.shape.length !== t.shape.length || s.shape.some((d, i) => d !== t.shape[i]))
      problems.push(`shape mismatch for ${name}: checkpoint [${s.shape}], model [${t.shape}]`);
  }
  for (const name of saved.keys()) if (!params.has(name)) problems.push(`unexpected: ${name}`);
  if (problems.length) throw new Error(`${source}: the checkpoint does not match the trained parameters:\n  ${problems.join("\n  ")}`);
  noGrad(() => {
    for (const [name, t] of params) {
      const s = saved.get(name)!;
      scope(() => {
        const v = tensor(s.data, { shape: s.shape, dtype: "f32", backend: t.backend });
        t.assign(t.dtype === "f32" ? v : v.cast(t.dtype));
      });
    }
  });
}
