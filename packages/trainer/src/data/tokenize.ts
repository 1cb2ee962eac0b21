/**
 * Tokenizing documents and prompt/response examples. An example is a list of segments, each
 * trained on or not; the whole text is encoded at once (so tokens match what generation sees),
 * and each segment boundary is found as the common prefix of encode(text before it) with the
 * whole encoding. A token that straddles a boundary counts as part of the later segment.
 */
import type { TextTokenizer } from "@lowrank/nn";

/** Token ids and, per token, whether it is a training target (1) or context only (0, label -100). */
export interface Example {
  ids: Int32Array;
  target: Uint8Array;
}

export interface Segment {
  text: string;
  train: boolean;
}

export interface EncodeSpec {
  /** Prepend the tokenizer's BOS (default true when it has one). */
  bos?: boolean;
  /** Append EOS as a target (default true when it has one): the model learns where a document ends. */
  eos?: boolean;
}

/**
 * Encode long text fast and exactly. Tokenizing a megabyte in one call is slow (the BPE runs over
 * one huge word for SentencePiece-style tokenizers), so text is encoded line by line as
 * encode(first line) ++ encode("\n" + line)[1:] ... That equals the whole encoding when merges
 * never cross a newline and the "\n"-prefixed piece starts with exactly one extra token; this is
 * checked on a prefix of the text, and the whole text is encoded at once when the check fails.
 */
export function encodeLong(tok: TextTokenizer, text: string): number[] {
  const enc = (s: string) => tok.encode(s, { addSpecialTokens: false });
  if (text.length < 16384 || !text.includes("\n")) return enc(text);
  const probeEnd = text.lastIndexOf("\n", 8192);
  const probe = text.slice(0, probeEnd > 0 ? probeEnd : 8192);
  if (!sameIds(enc(probe), lineWise(enc, probe))) return enc(text);
  return lineWise(enc, text);
}

function lineWise(enc: (s: string) => number[], text: string): number[] {
  const lines = text.split("\n");
  const out = enc(lines[0]);
  // The "\n"-prefixed piece's first token is the tokenizer's prefix artefact ("▁" for SentencePiece).
  const lead = enc("\n").length - 1;
  for (let i = 1; i < lines.length; i++) {
    const ids = enc(`\n${lines[i]}`);
    for (let j = lead; j < ids.length; j++) out.push(ids[j]);
  }
  return out;
}

function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** A document: BOS + text + EOS, every token a target. */
export function encodeDocument(tok: TextTokenizer, text: string, spec: EncodeSpec = {}): Example {
  const body = encodeLong(tok, text);
  const ids = [...bosOf(tok, spec), ...body, ...eosOf(tok, spec)];
  return { ids: Int32Array.from(ids), target: new Uint8Array(ids.length).fill(1) };
}

/** Segments (prompt parts not trained, responses trained) into one example; EOS is a target. */
export function encodeSegments(tok: TextTokenizer, segments: readonly Segment[], spec: EncodeSpec = {}): Example {
  const enc = (s: string) => tok.encode(s, { addSpecialTokens: false });
  const full = segments.map((s) => s.text).join("");
  const body = enc(full);
  const target = new Uint8Array(body.length);
  let offset = 0;
  for (let s = 0; s < segments.length; s++) {
    const start = offset === 0 ? 0 : commonPrefix(enc(full.slice(0, offset)), body);
    offset += segments[s].text.length;
    const end = s === segments.length - 1 ? body.length : commonPrefix(enc(full.slice(0, offset)), body);
    if (segments[s].train) target.fill(1, start, end);
  }
  const bos = bosOf(tok, spec);
  const eos = eosOf(tok, spec);
  const lastTrains = segments.length > 0 && segments[segments.length - 1].train;
  const ids = Int32Array.from([...bos, ...body, ...eos]);
  const t = new Uint8Array(ids.length);
  t.set(target, bos.length);
  if (eos.length && lastTrains) t[ids.length - 1] = 1;
  return { ids, target: t };
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function bosOf(tok: TextTokenizer, spec: EncodeSpec): number[] {
  return (spec.bos ?? true) && tok.bosTokenId !== null ? [tok.bosTokenId] : [];
}

function eosOf(tok: TextTokenizer, spec: EncodeSpec): number[] {
  return (spec.eos ?? true) && tok.eosTokenId !== null ? [tok.eosTokenId] : [];
}
