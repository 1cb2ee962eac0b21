/**
 * From a file to training examples: read records (text, JSONL/JSON `text`, Alpaca, chat),
 * tokenize, cut to windows of seqLen + 1 tokens, then a seeded train/eval split.
 *
 * Packing: each window holds tokens of ONE document. A document longer than a window fills
 * consecutive windows (stride seqLen, so every token is predicted exactly once); its last
 * window is shorter and gets padded at batch time. Windows never mix documents, so attention
 * never crosses a document boundary without needing a block-diagonal mask (the model has only
 * a causal one). The cost is padding on short documents. Instruction and chat examples are one
 * window each, truncated on the right to seqLen + 1 tokens.
 */
import { Rng } from "@lowrank/tensor";
import type { TextTokenizer } from "@lowrank/nn";
import { DatasetError, type JsonRecord, asObject, describe, parseJsonRecords, stringField } from "./records.ts";
import { type ChatMessage, type ChatRole, CHAT_ROLES, alpacaSegments, chatSegments, templateSegments } from "./templates.ts";
import { type Example, type Segment, encodeDocument, encodeSegments } from "./tokenize.ts";

export const DATA_FORMATS = ["text", "jsonl", "alpaca", "chat"] as const;
export type DataFormat = (typeof DATA_FORMATS)[number];

/** Separator between documents inside a plain-text file (TinyStories, GPT-2 convention). */
export const DOC_SEPARATOR = "<|endoftext|>";

export interface DatasetOptions {
  /** Default: from the extension and the first record (.txt -> text; `text` / `instruction` / `messages` keys). */
  format?: DataFormat;
  /** Tokens per training row (the model sees seqLen inputs and predicts seqLen targets). */
  seqLen: number;
  /** Fraction of examples held out for evaluation (default 0.05). */
  evalFraction?: number;
  /** Seed of the split (default 0). */
  seed?: number;
  /** Document separator for plain text (default "<|endoftext|>"). */
  docSeparator?: string;
  /** Gets the one-line notice that chat data falls back to ChatML (default: console.warn with "warning: "). */
  warn?: (line: string) => void;
}

export interface Dataset {
  format: DataFormat;
  train: Example[];
  eval: Example[];
  /** Chat data only: laid out by the tokenizer's chat template, or by the ChatML fallback. */
  chatLayout?: "template" | "chatml";
  /** What went in, for the report. */
  stats: { records: number; examples: number; tokens: number; targetTokens: number; truncated: number; noTargets: number };
  /** A prompt for before/after samples: the context of the first eval example. */
  samplePrompt: number[];
}

/** Pick the format from the file name and contents. */
export function detectFormat(file: string, text: string): DataFormat {
  const trimmed = text.trimStart();
  if (!/\.(jsonl|json)$/i.test(file) && !trimmed.startsWith("{") && !trimmed.startsWith("[")) return "text";
  const first = parseJsonRecords(text.slice(0, Math.min(text.length, nthRecordEnd(text))), file)[0];
  if (!first) throw new DatasetError(file, null, null, "no records");
  const obj = asObject(first, file);
  if ("messages" in obj) return "chat";
  if ("instruction" in obj) return "alpaca";
  if ("text" in obj) return "jsonl";
  throw new DatasetError(
    file,
    first.line,
    null,
    `cannot tell the format from the record keys (${Object.keys(obj).join(", ")}); expected "text", "instruction"/"output" or "messages", or pass --format`,
  );
}

/** End of the first JSONL line (a JSON array is parsed whole; detection only reads element 0 of it). */
function nthRecordEnd(text: string): number {
  const t = text.trimStart();
  if (t.startsWith("[")) return text.length;
  const nl = text.indexOf("\n", text.length - t.length);
  return nl < 0 ? text.length : nl;
}

/** Read, tokenize, window and split a dataset file's text. */
export function buildDataset(file: string, text: string, tok: TextTokenizer, opts: DatasetOptions): Dataset {
  if (!Number.isInteger(opts.seqLen) || opts.seqLen < 2) throw new RangeError(`seqLen must be an integer >= 2, got ${opts.seqLen}`);
  const format = opts.format ?? detectFormat(file, text);
  const win = opts.seqLen + 1;
  const units: Example[] = [];
  let records = 0;
  let truncated = 0;
  let noTargets = 0;
  let chatLayout: Dataset["chatLayout"];
  const addWindows = (ex: Example) => {
    // Windows start every seqLen tokens and overlap by one, so each token is a target once.
    for (let s = 0; s + 1 < ex.ids.length; s += opts.seqLen) {
      const e = Math.min(ex.ids.length, s + win);
      units.push({ ids: ex.ids.slice(s, e), target: ex.target.slice(s, e) });
      if (e === ex.ids.length) break;
    }
  };
  const addTruncated = (ex: Example) => {
    let e = ex;
    if (ex.ids.length > win) {
      truncated++;
      e = { ids: ex.ids.slice(0, win), target: ex.target.slice(0, win) };
    }
    if (!e.target.subarray(1).some((t) => t === 1)) {
      noTargets++;
      return;
    }
    units.push(e);
  };

  if (format === "text") {
    const sep = opts.docSeparator ?? DOC_SEPARATOR;
    const docs = text
      .split(sep)
      .map((d) => d.trim())
      .filter((d) => d.length > 0);
    if (!docs.length) throw new DatasetError(file, null, null, "the file has no text");
    for (const d of docs) addWindows(encodeDocument(tok, d));
    records = docs.length;
  } else {
    const recs = parseJsonRecords(text, file);
    if (!recs.length) throw new DatasetError(file, null, null, "no records");
    records = recs.length;
    // Validate every record before tokenizing any, so a bad record fails fast.
    const parsed = recs.map((r) => parseRecord(format, r, file));
    const template = tok.chatTemplate ?? null;
    if (format === "chat") {
      chatLayout = template ? "template" : "chatml";
      if (!template)
        (opts.warn ?? ((l) => console.warn(`warning: ${l}`)))(
          "the tokenizer has no chat_template (tokenizer_config.json); chat records use the ChatML layout <|im_start|>{role}\\n{content}<|im_end|>",
        );
    }
    for (const [k, p] of parsed.entries()) {
      if (format === "jsonl") addWindows(encodeDocument(tok, p as string));
      else if (format === "alpaca") addTruncated(encodeSegments(tok, p as Segment[]));
      else if (template) {
        // The template writes BOS and the end-of-turn markers itself (as transformers' apply_chat_template does).
        let segs: Segment[];
        try {
          segs = templateSegments(template, p as ChatMessage[]);
        } catch (e) {
          throw new DatasetError(file, recs[k].line, "messages", (e as Error).message);
        }
        addTruncated(encodeSegments(tok, segs, { bos: false, eos: false }));
      } else addTruncated(encodeSegments(tok, chatSegments(p as ChatMessage[])));
    }
  }
  if (!units.length) throw new DatasetError(file, null, null, `no usable examples (${noTargets} had no response tokens within seq_len ${opts.seqLen})`);

  const frac = opts.evalFraction ?? 0.05;
  if (!(frac >= 0 && frac < 1)) throw new RangeError(`evalFraction must be in [0, 1), got ${frac}`);
  const order = permutation(units.length, new Rng(((opts.seed ?? 0) ^ 0x5eed5911) >>> 0));
  const nEval = frac > 0 ? Math.min(units.length - 1, Math.max(1, Math.round(units.length * frac))) : 0;
  if (frac > 0 && nEval < 1)
    throw new DatasetError(file, null, null, `only ${units.length} example(s): too few to hold out an eval split; use --eval-fraction 0`);
  const evalSet = order
    .slice(0, nEval)
    .sort((a, b) => a - b)
    .map((i) => units[i]);
  const trainSet = order
    .slice(nEval)
    .sort((a, b) => a - b)
    .map((i) => units[i]);
  let tokens = 0;
  let targetTokens = 0;
  for (const u of units) {
    tokens += u.ids.length;
    for (let i = 1; i < u.target.length; i++) targetTokens += u.target[i];
  }
  return {
    format,
    ...(chatLayout ? { chatLayout } : {}),
    train: trainSet,
    eval: evalSet,
    stats: { records, examples: units.length, tokens, targetTokens, truncated, noTargets },
    samplePrompt: samplePromptOf(evalSet[0] ?? trainSet[0], format),
  };
}

/** The context part of an example (up to its first target), or its first 16 tokens for plain text. */
function samplePromptOf(ex: Example, format: DataFormat): number[] {
  if (format === "text" || format === "jsonl") return Array.from(ex.ids.subarray(0, Math.min(16, ex.ids.length)));
  const first = ex.target.indexOf(1);
  return Array.from(ex.ids.subarray(0, first > 0 ? first : 1));
}

function parseRecord(format: DataFormat, rec: JsonRecord, file: string): string | Segment[] | ChatMessage[] {
  if (format === "jsonl") return stringField(rec, "text", file, { nonEmpty: true });
  if (format === "alpaca") {
    const instruction = stringField(rec, "instruction", file, { nonEmpty: true });
    const input = stringField(rec, "input", file, { optional: true });
    const output = stringField(rec, "output", file, { nonEmpty: true });
    return alpacaSegments(instruction, input, output);
  }
  const obj = asObject(rec, file);
  const msgs = obj.messages;
  if (!Array.isArray(msgs)) throw new DatasetError(file, rec.line, "messages", msgs === undefined ? "missing" : `must be an array, got ${describe(msgs)}`);
  if (!msgs.length) throw new DatasetError(file, rec.line, "messages", "is empty");
  const out: ChatMessage[] = msgs.map((m, i) => {
    const field = `messages[${i}]`;
    if (typeof m !== "object" || m === null || Array.isArray(m)) throw new DatasetError(file, rec.line, field, `must be an object, got ${describe(m)}`);
    const { role, content } = m as Record<string, unknown>;
    if (!CHAT_ROLES.includes(role as ChatRole))
      throw new DatasetError(file, rec.line, `${field}.role`, `must be one of ${CHAT_ROLES.join(", ")}, got ${describe(role)}`);
    if (typeof content !== "string") throw new DatasetError(file, rec.line, `${field}.content`, `must be a string, got ${describe(content)}`);
    return { role: role as ChatRole, content };
  });
  if (!out.some((m) => m.role === "assistant")) throw new DatasetError(file, rec.line, "messages", "has no assistant turn to train on");
  return out;
}

/** A seeded Fisher-Yates permutation of 0..n-1. */
export function permutation(n: number, rng: Rng): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}
