/** The llama2.c encoder's heap merge against a line-by-line port of run.c's quadratic loop. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Rng } from "@lowrank/tensor";
import { Llama2cTokenizer, TextStream, loadLlama2cTokenizer } from "../src/node.ts";
import { noData, storiesDir, tokBytes } from "./helpers.ts";

/** run.c `encode`, transcribed: rescan all pairs each round, strict `>` keeps the leftmost best. */
function runCEncode(tok: Llama2cTokenizer, text: string): number[] {
  const str = (b: Uint8Array) => String.fromCharCode(...b);
  const lookup = new Map<string, number>();
  tok.pieces.forEach((p, i) => lookup.has(str(p)) || lookup.set(str(p), i));
  const tokens = [1];
  const bytes = new TextEncoder().encode(text);
  if (bytes.length) tokens.push(lookup.get(" ") as number);
  let buf: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    if ((bytes[i] & 0xc0) !== 0x80) buf = [];
    buf.push(bytes[i]);
    if (i + 1 < bytes.length && (bytes[i + 1] & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup.get(String.fromCharCode(...buf));
    if (id !== undefined) tokens.push(id);
    else for (const b of buf) tokens.push(b + 3);
    buf = [];
  }
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = lookup.get(str(tok.pieces[tokens[i]]) + str(tok.pieces[tokens[i + 1]]));
      if (id !== undefined && tok.scores[id] > best) {
        best = tok.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}

function randomText(rng: Rng, alphabet: string[], n: number): string {
  return Array.from({ length: n }, () => alphabet[rng.int(alphabet.length)]).join("");
}

test("heap merge == run.c on a synthetic vocabulary full of score ties", () => {
  const bytePieces = Array.from({ length: 256 }, (_, i) => `<0x${i.toString(16).toUpperCase().padStart(2, "0")}>`);
  const merges = [" ", "a", "b", "c", "aa", "ab", "ba", "bb", "aaa", "aba", " a", " b", "abab", "ca", "ac", "cc", "ccc", " ab", "é", "éa"];
  const pieces = ["<unk>", "\n<s>\n", "\n</s>\n", ...bytePieces, ...merges];
  // Scores in a few buckets, so many pairs tie and the leftmost rule decides.
  const tok = Llama2cTokenizer.fromBytes(tokBytes(pieces, (i) => (i < 259 ? 0 : -((i * 7) % 3))));
  const rng = new Rng(11);
  const alphabet = ["a", "b", "c", " ", "é", "x", "\n", "😊"];
  for (let k = 0; k < 300; k++) {
    const text = randomText(rng, alphabet, rng.int(40));
    assert.deepEqual(tok.encode(text), runCEncode(tok, text), JSON.stringify(text));
  }
});

test("heap merge == run.c on tok512.bin for random and real text", { skip: noData }, async () => {
  const tok = await loadLlama2cTokenizer(join(storiesDir as string, "tok512.bin"));
  const rng = new Rng(5);
  const alphabet = [..."abcdefghijklmnopqrstuvwxyz      ,.!?'\"\n", "Lily", "the", "ing", " and", "é", "東", "😊"];
  for (let k = 0; k < 200; k++) {
    const text = randomText(rng, alphabet, rng.int(60));
    assert.deepEqual(tok.encode(text), runCEncode(tok, text), JSON.stringify(text));
  }
});

test("TextStream holds back partial UTF-8 and matches a full decode", { skip: noData }, async () => {
  const tok = await loadLlama2cTokenizer(join(storiesDir as string, "tok512.bin"));
  const text = "Hi café 😊 東京, Lily!";
  const ids = tok.encode(text);
  const stream = new TextStream(tok, ids.slice(0, 2));
  const pieces = ids.slice(2).map((id) => stream.push(id));
  pieces.push(stream.flush());
  assert.equal(tok.decode(ids.slice(0, 2)) + pieces.join(""), text);
  assert.ok(pieces.every((p) => !p.includes("\uFFFD")));
  assert.ok(pieces.includes(""), "the emoji's first byte pieces produce no text yet");
});
