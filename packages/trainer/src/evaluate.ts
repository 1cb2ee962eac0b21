/** Held-out loss and perplexity, and greedy samples, all under noGrad with the model in eval mode. */
import { type LlamaForCausalLM, type TextTokenizer, generateIds } from "@lowrank/nn";
import { noGrad } from "@lowrank/tensor";
import { batchesOf } from "./data/loader.ts";
import type { Example } from "./data/tokenize.ts";
import { batchLossSum } from "./loss.ts";

export interface EvalResult {
  loss: number;
  perplexity: number;
  tokens: number;
}

/** Mean per-token loss over the split (or its first `maxBatches` batches). */
export async function evaluate(
  model: LlamaForCausalLM,
  examples: readonly Example[],
  opts: { batchSize: number; padId: number; maxBatches?: number },
): Promise<EvalResult> {
  const wasTraining = model.training;
  model.eval();
  let sum = 0;
  let tokens = 0;
  let n = 0;
  try {
    for (const b of batchesOf(examples, opts.batchSize, opts.padId)) {
      if (opts.maxBatches && n++ >= opts.maxBatches) break;
      if (!b.targets) continue;
      const l = noGrad(() => batchLossSum(model, b));
      try {
        sum += await l.item();
      } finally {
        l.dispose();
      }
      tokens += b.targets;
    }
  } finally {
    model.train(wasTraining);
  }
  const loss = tokens ? sum / tokens : NaN;
  return { loss, perplexity: Math.exp(loss), tokens };
}

/** Greedy continuation of `promptIds`, decoded (the prompt not included). */
export async function greedySample(model: LlamaForCausalLM, tok: TextTokenizer, promptIds: readonly number[], maxNewTokens: number): Promise<string> {
  const wasTraining = model.training;
  model.eval();
  try {
    const stopTokens = [...model.config.eos_token_id, ...(tok.eosTokenId === null ? [] : [tok.eosTokenId])];
    const ids = await generateIds(model, promptIds, { maxNewTokens, stopTokens });
    // Decode with the prompt so a leading space of the continuation survives the decoder's strip.
    const prompt = tok.decode(promptIds);
    const full = tok.decode([...promptIds, ...ids]);
    return full.startsWith(prompt) ? full.slice(prompt.length) : tok.decode(ids);
  } finally {
    model.train(wasTraining);
  }
}
