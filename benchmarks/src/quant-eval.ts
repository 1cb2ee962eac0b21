/**
 * What 4-bit quantization costs stories260K: mean teacher-forced cross-entropy on held-out
 * TinyStories text for the f32 model and for NF4/FP4 with and without double quantization,
 * the greedy continuation of "Once upon a time", and the stored bytes.
 *
 *   node --import tsx benchmarks/src/quant-eval.ts [--data-dir <dir>] [--out <file.json>]
 *
 * Data: <data-dir>/models/stories260K-hf and <data-dir>/datasets/tinystories/tinystories_sample.txt
 * (default: $LOWRANK_DATA_DIR, else ../shared/data beside the repository).
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createCpuBackend } from "@lowrank/backend-cpu";
import { type QuantType } from "@lowrank/nf4";
import {
  type LlamaForCausalLM,
  type QuantizeModelOptions,
  type TextTokenizer,
  generateIds,
  loadHfModel,
  loadTokenizer,
  quantizeModel,
  quantizedMemoryReport,
  resolveDataDir,
} from "@lowrank/nn/node";
import { crossEntropy, noGrad, scope, setDefaultBackend, tensor } from "@lowrank/tensor";

export interface EvalRow {
  variant: string;
  quantType: QuantType | null;
  doubleQuant: boolean | null;
  blocksize: number | null;
  /** Mean cross-entropy in nats per predicted token over the held-out text. */
  loss: number;
  /** loss minus the f32 model's loss. */
  delta: number;
  perplexity: number;
  /** 4-bit layers only (codes + absmax): bits per quantized parameter. */
  bitsPerParam: number | null;
  /** Everything stored: 4-bit layers, their tables, and the dense rest (embeddings, norms). */
  modelBytes: number;
  greedy: string;
}

/** Sum of per-token cross-entropy and the token count: each story is its own sequence (BOS first), cut to the context. */
export function evalLoss(model: LlamaForCausalLM, tok: TextTokenizer, text: string): { loss: number; tokens: number } {
  let sum = 0;
  let tokens = 0;
  const ctx = model.config.max_position_embeddings;
  for (const story of text
    .split("<|endoftext|>")
    .map((s) => s.trim())
    .filter(Boolean)) {
    const ids = tok.encode(story).slice(0, ctx + 1);
    if (ids.length < 2) continue;
    sum += noGrad(() =>
      scope(() => {
        const logits = model.forward(tensor([ids.slice(0, -1)], { dtype: "i32", backend: model.backend }));
        return crossEntropy(logits, tensor([ids.slice(1)], { dtype: "i32", backend: model.backend }), { reduction: "sum" }).readSync()[0];
      }),
    );
    tokens += ids.length - 1;
  }
  return { loss: sum / tokens, tokens };
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { "data-dir": { type: "string" }, out: { type: "string" } } });
  const data = await resolveDataDir({ dataDir: values["data-dir"], env: process.env });
  if (!data) throw new Error("no data directory: pass --data-dir or set LOWRANK_DATA_DIR (needs models/stories260K-hf)");
  const modelDir = join(data, "models", "stories260K-hf");
  const textPath = join(data, "datasets", "tinystories", "tinystories_sample.txt");
  const backend = createCpuBackend({ threads: 0 });
  setDefaultBackend(backend);
  const tok = await loadTokenizer(modelDir);
  const text = await readFile(textPath, "utf8");
  const prompt = tok.encode("Once upon a time");
  const greedy = async (m: LlamaForCausalLM) => tok.decode([...prompt, ...(await generateIds(m, prompt, { maxNewTokens: 80 }))]);

  const variants: [string, QuantizeModelOptions | null][] = [
    ["f32", null],
    ["NF4 + DQ (default)", {}],
    ["NF4", { doubleQuant: false }],
    ["FP4 + DQ", { quantType: "fp4" }],
    ["FP4", { quantType: "fp4", doubleQuant: false }],
    ["NF4 + DQ, blocksize 128", { blocksize: 128 }],
  ];
  const rows: EvalRow[] = [];
  let base = NaN;
  let tokens = 0;
  for (const [variant, opts] of variants) {
    const m = await loadHfModel(modelDir, { backend });
    if (opts) await quantizeModel(m, opts);
    const r = evalLoss(m, tok, text);
    tokens = r.tokens;
    if (!opts) base = r.loss;
    const mem = quantizedMemoryReport(m);
    rows.push({
      variant,
      quantType: opts ? opts.quantType ?? "nf4" : null,
      doubleQuant: opts ? opts.doubleQuant ?? true : null,
      blocksize: opts ? opts.blocksize ?? 64 : null,
      loss: r.loss,
      delta: r.loss - base,
      perplexity: Math.exp(r.loss),
      bitsPerParam: opts ? mem.bitsPerParam : null,
      modelBytes: mem.totalBytes,
      greedy: await greedy(m),
    });
    m.dispose();
    const row = rows[rows.length - 1];
    console.log(
      `${variant.padEnd(24)} loss ${row.loss.toFixed(4)} nats/token (${row.delta >= 0 ? "+" : ""}${row.delta.toFixed(4)}), ppl ${row.perplexity.toFixed(3)}, ${
        row.bitsPerParam?.toFixed(3) ?? "32"
      } bits/param, ${row.modelBytes} B`,
    );
    console.log(`  ${JSON.stringify(row.greedy)}`);
  }
  backend.dispose();
  const date = new Date().toISOString().slice(0, 10);
  const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
  const out = values.out ?? join(root, "results", `quant-eval-${date}.json`);
  await mkdir(dirname(out), { recursive: true });
  const result = {
    date,
    command: "node --import tsx benchmarks/src/quant-eval.ts",
    runtime: `node ${process.versions.node}`,
    model: "stories260K-hf",
    text: "datasets/tinystories/tinystories_sample.txt",
    tokens,
    rows,
  };
  await writeFile(out, JSON.stringify(result, null, 2) + "\n");
  console.log(`wrote ${out} (${tokens} predicted tokens)`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
