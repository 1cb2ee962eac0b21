/** The training objective on one batch: shared by the loop (with a graph) and evaluation (under noGrad). */
import type { LlamaForCausalLM } from "@lowrank/nn";
import { scope, tensor } from "@lowrank/tensor";
import { type Batch, IGNORE_INDEX } from "./data/loader.ts";

/** Summed token loss of one batch (labels IGNORE_INDEX skipped); builds a graph unless under noGrad. */
export function batchLossSum(model: LlamaForCausalLM, b: Batch) {
  return scope(() => {
    const backend = model.backend;
    const ids = tensor(b.ids, { shape: [b.B, b.T], dtype: "i32", backend });
    const labels = tensor(b.labels, { shape: [b.B, b.T], dtype: "i32", backend });
    return model.lossSum(ids, labels, IGNORE_INDEX);
  });
}
