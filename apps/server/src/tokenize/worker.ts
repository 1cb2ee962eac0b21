/**
 * The tokenizer thread: parses and tokenizes uploaded datasets (and long prompts) off the
 * server's event loop, so /healthz and streaming keep answering while a 10 MB upload is checked.
 * Started by pool.ts with workerData {modelDir}; answers one message at a time.
 */
import { readFile } from "node:fs/promises";
import { parentPort, workerData } from "node:worker_threads";
import { loadTokenizer } from "@lowrank/nn/node";
import { DatasetError, type DataFormat, buildDataset } from "@lowrank/trainer/node";
import type { TokenReply, TokenRequest } from "./pool.ts";

const { modelDir } = workerData as { modelDir: string };
const tokenizer = loadTokenizer(modelDir);

/** Refuse what is not text: invalid UTF-8, NUL characters, or mostly control characters. */
export function checkText(bytes: Uint8Array): string {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new NotText("the dataset is not UTF-8 text (binary data?)");
  }
  const nul = text.indexOf("\0");
  if (nul >= 0) throw new NotText(`the dataset holds a NUL character at offset ${nul}; datasets are text, JSONL or JSON`);
  let control = 0;
  for (let i = 0; i < Math.min(text.length, 1 << 16); i++) {
    const c = text.charCodeAt(i);
    if (c < 32 && c !== 9 && c !== 10 && c !== 13) control++;
  }
  if (control > Math.min(text.length, 1 << 16) / 100) throw new NotText("the dataset is mostly control characters (binary data?)");
  return text;
}

class NotText extends Error {}

async function handle(req: TokenRequest): Promise<TokenReply> {
  const tok = await tokenizer;
  try {
    if (req.op === "encode") return { id: req.id, ok: true, ids: tok.encode(req.text) };
    const text = checkText(await readFile(req.path));
    if (!text.trim()) return { id: req.id, ok: false, kind: "invalid", message: "the dataset is empty" };
    const d = buildDataset(req.label, text, tok, { format: req.format as DataFormat | undefined, seqLen: req.seqLen, evalFraction: 0, warn: () => {} });
    return { id: req.id, ok: true, format: d.format, examples: d.train.length, tokens: d.stats.tokens };
  } catch (e) {
    const invalid = e instanceof DatasetError || e instanceof NotText;
    return { id: req.id, ok: false, kind: invalid ? "invalid" : "error", message: (e as Error).message ?? String(e) };
  }
}

parentPort?.on("message", (req: TokenRequest) => {
  void handle(req).then((r) => parentPort?.postMessage(r));
});
