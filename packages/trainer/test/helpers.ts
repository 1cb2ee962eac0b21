/** Shared test helpers: a char-level tokenizer, the shared data directory, temp dirs. */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import type { TextTokenizer } from "@lowrank/nn";

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
    return ids.filter((i) => i >= 3).map((i) => String.fromCharCode(i - 3)).join("");
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
