/** Shared test helpers: a char-level tokenizer, the shared data directory, temp dirs. */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import type { TextTokenizer } from "@lowrank/nn/node";
import type { FinetuneInput } from "../src/node.ts";

/** One id per character (3 + code unit), BOS 1, EOS 2: boundaries are exact, so masks are easy to check. */
export class CharTokenizer implements TextTokenizer {
  readonly vocabSize = 3 + 256;
  readonly bosTokenId = 1;
  readonly eosTokenId = 2;
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const ids = Array.from(text, (c) => 3 + (c.charCodeAt(0) & 255));
    return opts.addSpecialTokens ?? true ? [1, ...ids] : ids;
  }
  decode(ids: readonly number[]): string {
    return ids
      .filter((i) => i >= 3)
      .map((i) => String.fromCharCode(i - 3))
      .join("");
  }
}

/** The shared data directory (LOWRANK_DATA_DIR or ../shared/data beside the repository), or null. */
export function dataDir(): string | null {
  const env = process.env.LOWRANK_DATA_DIR;
  if (env) return existsSync(env) ? env : null;
  const beside = resolve(fileURLToPath(new URL("../../../../shared/data", import.meta.url)));
  return existsSync(beside) ? beside : null;
}

export const STORIES = "models/stories260K-hf";
export const SHAKESPEARE = "datasets/tinyshakespeare/input.txt";

export function tempDir(tag: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), `lowrank-trainer-${tag}-`));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * The end-to-end setting of the train tests: stories260K and the first 6000 characters of Tiny
 * Shakespeare in a temp dir, and `cfg(over)`, a short LoRA run (6 steps, batch 2 x 32) writing to
 * a fresh output directory. `skip` is the reason when the shared data is missing.
 */
export function storiesRuns(tag: string): {
  skip: string | false;
  tmp: ReturnType<typeof tempDir>;
  slice: string;
  cfg(over?: Partial<FinetuneInput>): FinetuneInput;
} {
  const data = dataDir();
  const tmp = tempDir(tag);
  const slice = join(tmp.path, "shakespeare-slice.txt");
  if (data) writeFileSync(slice, readFileSync(join(data, SHAKESPEARE), "utf8").slice(0, 6000));
  let runs = 0;
  return {
    skip: data ? false : "no shared data directory (set LOWRANK_DATA_DIR)",
    tmp,
    slice,
    cfg: (over = {}) => ({
      model: join(data ?? "", STORIES),
      data: slice,
      output: join(tmp.path, `run-${runs++}`),
      method: "lora",
      targetModules: "all-linear",
      rank: 4,
      alpha: 8,
      dropout: 0.1,
      lr: 3e-3,
      steps: 6,
      batchSize: 2,
      seqLen: 32,
      warmup: 1,
      evalFraction: 0.1,
      evalBatches: 2,
      sampleTokens: 0,
      seed: 3,
      ...over,
    }),
  };
}
