/** The data pipeline: packing, masking, split and shuffle determinism, padding, bad records. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadTokenizer } from "@lowrank/nn/node";
import {
  BatchLoader,
  DatasetError,
  IGNORE_INDEX,
  alpacaPrompt,
  buildDataset,
  chatPrompt,
  collate,
  detectFormat,
  encodeLong,
  encodeSegments,
  parseJsonRecords,
} from "../src/node.ts";
import { CharTokenizer, SHAKESPEARE, STORIES, dataDir } from "./helpers.ts";

const tok = new CharTokenizer();
const ids = (s: string) => Array.from(s, (c) => 3 + c.charCodeAt(0));

test("plain text: BOS + text + EOS per document, windows of seqLen+1 with stride seqLen, no document mixing", () => {
  const text = "abcdefghij<|endoftext|>XYZ";
  const d = buildDataset("t.txt", text, tok, { seqLen: 4, evalFraction: 0 });
  assert.equal(d.format, "text");
  assert.equal(d.stats.records, 2);
  const rows = d.train.map((e) => Array.from(e.ids));
  // doc 1: [1, a..j, 2] = 12 tokens -> windows [0,5) [4,9) [8,12); doc 2: [1, X, Y, Z, 2] -> one window.
  const doc1 = [1, ...ids("abcdefghij"), 2];
  assert.deepEqual(rows, [doc1.slice(0, 5), doc1.slice(4, 9), doc1.slice(8, 12), [1, ...ids("XYZ"), 2]]);
  // every token after BOS is a target exactly once across a document's windows
  let targets = 0;
  for (const e of d.train.slice(0, 3)) targets += e.target.subarray(1).reduce((a, b) => a + b, 0);
  assert.equal(targets, doc1.length - 1);
});

test("collate: inputs/labels shifted by one, right padding with ignore-index labels", () => {
  const d = buildDataset("t.txt", "abcdefghij<|endoftext|>XYZ", tok, { seqLen: 4, evalFraction: 0 });
  const b = collate([d.train[2], d.train[3]], 0); // lengths 4 and 5 -> T = 4
  assert.equal(b.T, 4);
  assert.deepEqual(Array.from(b.ids), [...ids("hij"), 0, 1, ...ids("XYZ")]);
  assert.deepEqual(Array.from(b.labels), [...ids("ij"), 2, IGNORE_INDEX, ...ids("XYZ"), 2]);
  assert.equal(b.targets, 7);
});

test("alpaca: the prompt is masked (labels -100), the response and EOS are targets; input changes the template", () => {
  const recs = [
    { instruction: "Add", input: "1+1", output: "2" },
    { instruction: "Greet", input: "", output: "hi" },
  ];
  const d = buildDataset("a.jsonl", recs.map((r) => JSON.stringify(r)).join("\n"), tok, { seqLen: 512, evalFraction: 0 });
  assert.equal(d.format, "alpaca");
  for (const [i, r] of recs.entries()) {
    const e = d.train[i];
    const prompt = alpacaPrompt(r.instruction, r.input);
    assert.deepEqual(Array.from(e.ids), [1, ...ids(prompt), ...ids(r.output), 2]);
    const b = collate([e], 0);
    const want = [...new Array(prompt.length).fill(IGNORE_INDEX), ...ids(r.output), 2];
    assert.deepEqual(Array.from(b.labels), want);
  }
  assert.match(alpacaPrompt("x", "y"), /### Input:\ny\n\n### Response:\n$/);
  assert.doesNotMatch(alpacaPrompt("x"), /### Input/);
});

test("chat without a template (ChatML, said once): only assistant turns (content and end marker) and EOS are targets", () => {
  const messages = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello" },
    { role: "user", content: "Bye" },
    { role: "assistant", content: "Ciao" },
  ];
  const warnings: string[] = [];
  const d = buildDataset("c.jsonl", JSON.stringify({ messages }), tok, { seqLen: 1024, evalFraction: 0, warn: (l) => warnings.push(l) });
  assert.equal(d.format, "chat");
  assert.equal(d.chatLayout, "chatml");
  assert.equal(warnings.length, 1, "the ChatML fallback is said in one line");
  assert.match(warnings[0], /no chat_template .*ChatML/);
  const e = d.train[0];
  const trained = Array.from(e.ids)
    .filter((_, i) => e.target[i])
    .map((i) => (i === 2 ? "</s>" : String.fromCharCode(i - 3)))
    .join("");
  assert.equal(trained, "Hello<|im_end|>\nCiao<|im_end|>\n</s>");
  assert.equal(d.samplePrompt.length, [1, ...ids(chatPrompt(messages.slice(0, 2) as never))].length);
});

test("segment boundaries use the whole-text encoding; a token straddling a boundary belongs to the later segment", () => {
  // A tokenizer that merges "ab" into one id: "xa" + "bc" straddles at the boundary.
  const merging = {
    ...tok,
    vocabSize: 300,
    bosTokenId: 1,
    eosTokenId: 2,
    decode: tok.decode,
    encode: (s: string) =>
      s
        .replace(/ab/g, "\u0100")
        .split("")
        .map((c) => (c === "\u0100" ? 299 : 3 + c.charCodeAt(0))),
  };
  const e = encodeSegments(merging, [
    { text: "xa", train: false },
    { text: "bc", train: true },
  ]);
  assert.deepEqual(Array.from(e.ids), [1, 3 + 120, 299, 3 + 99, 2]);
  assert.deepEqual(Array.from(e.target), [0, 0, 1, 1, 1]);
});

test("train/eval split and shuffling are seeded: same seed same split and order, another seed another", () => {
  const text = Array.from({ length: 60 }, (_, i) => `document number ${i}`).join("<|endoftext|>");
  const a = buildDataset("t.txt", text, tok, { seqLen: 64, evalFraction: 0.2, seed: 1 });
  const b = buildDataset("t.txt", text, tok, { seqLen: 64, evalFraction: 0.2, seed: 1 });
  const c = buildDataset("t.txt", text, tok, { seqLen: 64, evalFraction: 0.2, seed: 2 });
  const key = (d: typeof a) => d.eval.map((e) => tok.decode(Array.from(e.ids))).join("|");
  assert.equal(a.eval.length, 12);
  assert.equal(a.train.length, 48);
  assert.equal(key(a), key(b));
  assert.notEqual(key(a), key(c));
  const evalSet = new Set(a.eval.map((e) => tok.decode(Array.from(e.ids))));
  assert.ok(
    a.train.every((e) => !evalSet.has(tok.decode(Array.from(e.ids)))),
    "train and eval are disjoint",
  );
  const order = (seed: number) => {
    const l = new BatchLoader(a.train, 5, seed, 0);
    return Array.from({ length: 12 }, () => Array.from(l.next().ids.subarray(0, 20)).join(",")).join("/");
  };
  assert.equal(order(7), order(7));
  assert.notEqual(order(7), order(8));
});

test("the loader resumes exactly from its (epoch, cursor) state and never spans epochs", () => {
  const d = buildDataset("t.txt", Array.from({ length: 7 }, (_, i) => `doc ${i}`).join("<|endoftext|>"), tok, { seqLen: 16, evalFraction: 0 });
  const a = new BatchLoader(d.train, 3, 5, 0);
  const sizes = Array.from({ length: 6 }, () => a.next().B);
  assert.deepEqual(sizes, [3, 3, 1, 3, 3, 1]);
  const b = new BatchLoader(d.train, 3, 5, 0);
  for (let i = 0; i < 4; i++) b.next();
  const c = new BatchLoader(d.train, 3, 5, 0);
  c.load(b.state());
  for (let i = 0; i < 5; i++) assert.deepEqual(Array.from(c.next().ids), Array.from(b.next().ids));
});

test("bad records name the file, the line and the field", () => {
  const bad = (file: string, text: string, re: RegExp, line: number | null, field: string | null) => {
    assert.throws(
      () => buildDataset(file, text, tok, { seqLen: 32, evalFraction: 0 }),
      (e: unknown) => {
        assert.ok(e instanceof DatasetError, String(e));
        assert.equal(e.file, file);
        assert.equal(e.line, line);
        assert.equal(e.field, field);
        assert.match(e.message, re);
        return true;
      },
    );
  };
  const ok = JSON.stringify({ instruction: "a", input: "", output: "b" });
  bad("x.jsonl", `${ok}\n${ok}\n{"instruction": "a", "input": ""}\n`, /^x\.jsonl:3: field "output": missing/, 3, "output");
  bad("x.jsonl", `${ok}\n\n{"instruction": 5, "output": "b"}`, /x\.jsonl:3: field "instruction": must be a string, got number 5/, 3, "instruction");
  bad("x.jsonl", `${ok}\n{"instruction": "a", "output": `, /x\.jsonl:2: not valid JSON/, 2, null);
  bad("x.jsonl", `{"text": "fine"}\n{"text": ""}`, /x\.jsonl:2: field "text": is empty/, 2, "text");
  bad("x.json", `[\n  ${ok},\n  {\n    "instruction": "a",\n    "output": null\n  }\n]`, /x\.json:3: field "output": missing/, 3, "output");
  bad("x.json", `[\n  ${ok},\n  {"instruction": "a", "output": "b"`, /not closed/, 3, null);
  bad(
    "c.jsonl",
    `{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}`,
    /c\.jsonl:1: field "messages\[1\]\.role": must be one of system, user, assistant/,
    1,
    "messages[1].role",
  );
  bad("c.jsonl", `{"messages": [{"role": "user", "content": "hi"}]}`, /no assistant turn/, 1, "messages");
  bad("c.jsonl", `{"messages": [{"role": "assistant", "content": 3}]}`, /messages\[0\]\.content/, 1, "messages[0].content");
  bad("x.jsonl", `{"prompt": "a"}`, /cannot tell the format/, 1, null);
  bad("x.txt", "  \n ", /no text/, null, null);
});

test("JSON arrays keep each element's line; format detection", () => {
  const recs = parseJsonRecords('[\n {"text": "a"},\n\n {"text": "b, [x]"}\n]\n', "f.json");
  assert.deepEqual(
    recs.map((r) => r.line),
    [2, 4],
  );
  assert.equal(detectFormat("f.txt", "hello"), "text");
  assert.equal(detectFormat("f.jsonl", '{"text": "x"}\n'), "jsonl");
  assert.equal(detectFormat("f.json", '[{"instruction": "x", "output": "y"}]'), "alpaca");
  assert.equal(detectFormat("f.jsonl", '{"messages": []}'), "chat");
});

test("instruction examples longer than a window are truncated; those with no response left are dropped", () => {
  const long = JSON.stringify({ instruction: "x".repeat(400), output: "y" });
  const fine = JSON.stringify({ instruction: "q", output: "a".repeat(300) });
  const d = buildDataset("a.jsonl", `${long}\n${fine}`, tok, { seqLen: 256, evalFraction: 0 });
  assert.equal(d.stats.noTargets, 1);
  assert.equal(d.stats.truncated, 2);
  assert.equal(d.train.length, 1);
  assert.equal(d.train[0].ids.length, 257);
});

test("encodeLong (line-wise) equals whole-text encoding with the stories260K tokenizer", async (t) => {
  const dir = dataDir();
  if (!dir) return t.skip("no shared data directory (set LOWRANK_DATA_DIR)");
  const real = await loadTokenizer(join(dir, STORIES));
  const text = readFileSync(join(dir, SHAKESPEARE), "utf8").slice(0, 40000);
  assert.deepEqual(encodeLong(real, text), real.encode(text, { addSpecialTokens: false }));
});
