/**
 * The product's own speed on a peer shape: `finetune()` (what `lowrank finetune` runs) on the
 * same random-weight model, batch, sequence length and LoRA config as a peer row, reading
 * tokens/s from the metrics.jsonl it writes. The peer row times the same loop on synthetic
 * batches; the two agreeing says the speed is the product's, not only the benchmark's.
 * Needs the data directory (stories260K's 512-token tokenizer, Tiny Shakespeare).
 */
import { copyFile, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Backend } from "@lowrank/tensor";
import { saveHfModel } from "@lowrank/nn/node";
import { finetune } from "@lowrank/trainer/node";
import { median } from "./common.ts";
import { type Shape, randomModel } from "./models.ts";
import type { MethodSpec } from "./step.ts";

export interface ProductRun {
  command: string;
  /** Median over the timed steps of metrics.jsonl's tokens_per_s (target tokens per second, as the trainer counts them). */
  tokens_per_s: number;
  tokens_per_s_all: number[];
}

export async function productRun(
  be: Backend,
  shape: Shape,
  spec: MethodSpec,
  o: { batch: number; seq: number; steps: number; warmup: number; lr: number; dataDir: string },
): Promise<ProductRun> {
  if (shape.vocab !== 512) throw new Error(`product run: shape ${shape.name} has vocab ${shape.vocab}; it borrows stories260K's 512-token tokenizer`);
  const dir = await mkdtemp(join(tmpdir(), "lowrank-product-"));
  try {
    const modelDir = join(dir, "model");
    const model = randomModel(shape, be, 0);
    try {
      await saveHfModel(model, modelDir);
    } finally {
      model.dispose();
    }
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) await copyFile(join(o.dataDir, "models/stories260K-hf", f), join(modelDir, f));
    const data = join(o.dataDir, "datasets/tinyshakespeare/input.txt");
    const output = join(dir, "run");
    const total = o.warmup + o.steps;
    await finetune(
      {
        model: modelDir,
        data,
        output,
        method: spec.method,
        rank: spec.rank,
        alpha: spec.alpha,
        dropout: spec.dropout,
        targetModules: spec.targets,
        lr: o.lr,
        steps: total,
        batchSize: o.batch,
        seqLen: o.seq,
        warmup: 0,
        scheduler: "constant",
        evalFraction: 0.01,
        evalBatches: 1,
        recomputeActivations: spec.recompute,
      },
      { backend: be, skipSamples: true },
    );
    const records = (await readFile(join(output, "metrics.jsonl"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { split: string; tokens_per_s: number });
    const train = records.filter((r) => r.split === "train").slice(o.warmup);
    const tps = median(train.map((r) => r.tokens_per_s));
    const command =
      `lowrank finetune --method ${spec.method} --model <d256 random> --data datasets/tinyshakespeare/input.txt --rank ${spec.rank} --alpha ${spec.alpha} ` +
      `--dropout ${spec.dropout} --target-modules ${spec.targets === "all-linear" ? "all-linear" : spec.targets.join(",")} --steps ${total} --batch-size ${
        o.batch
      } --seq-len ${o.seq} --lr ${o.lr} --scheduler constant --warmup 0`;
    return { command, tokens_per_s: tps, tokens_per_s_all: train.map((r) => r.tokens_per_s) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
