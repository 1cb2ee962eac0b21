/**
 * The character cap checked before a prompt is tokenized. A token never covers more characters
 * than the longest piece in the vocabulary (byte-level pieces cover one byte each, at most one
 * character), so a prompt longer than context x longest piece x 2 (slack for normalizers that
 * merge characters) cannot fit the context, and is refused without tokenizing it.
 */
import type { TextTokenizer } from "@lowrank/nn/node";

/** Below this many characters a prompt is tokenized inline; above it, in the tokenizer thread. */
export const INLINE_PROMPT_CHARS = 16 * 1024;

export function longestPiece(tok: TextTokenizer): number {
  const vocab = (tok as { tokenizer?: { get_vocab?: (withAdded: boolean) => Map<string, number> | Record<string, number> } }).tokenizer?.get_vocab?.(true);
  if (!vocab) return 64;
  const keys = vocab instanceof Map ? vocab.keys() : Object.keys(vocab);
  let max = 1;
  for (const k of keys) if (k.length > max) max = k.length;
  return max;
}

export function promptCharCap(tok: TextTokenizer, maxPositions: number): number {
  return maxPositions * longestPiece(tok) * 2;
}
