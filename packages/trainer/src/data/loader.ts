/**
 * Seeded shuffling and padded batches. The order of epoch e is a pure function of (seed, e), so
 * the data position is just (epoch, cursor) and a resumed run sees exactly the same batches.
 */
import { Rng } from "@lowrank/tensor";
import { permutation } from "./dataset.ts";
import type { Example } from "./tokenize.ts";

/** Label of a position that is not trained on (torch's CrossEntropyLoss ignore_index). */
export const IGNORE_INDEX = -100;

/** One padded micro-batch on the host: inputs and labels [B, T], row-major. */
export interface Batch {
  B: number;
  T: number;
  ids: Int32Array;
  labels: Int32Array;
  /** Number of labels that are not IGNORE_INDEX. */
  targets: number;
}

export interface LoaderState {
  epoch: number;
  cursor: number;
}

/**
 * Right-pad examples to the longest in the batch. Inputs are ids[0..n-1), labels ids[1..n) where
 * the token is a target, else IGNORE_INDEX; padding gets `padId` and IGNORE_INDEX. With a causal
 * model, right padding never changes the real positions' outputs.
 */
export function collate(examples: readonly Example[], padId: number): Batch {
  const B = examples.length;
  const T = Math.max(...examples.map((e) => e.ids.length - 1));
  const ids = new Int32Array(B * T).fill(padId);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  let targets = 0;
  examples.forEach((e, b) => {
    const n = e.ids.length - 1;
    for (let t = 0; t < n; t++) {
      ids[b * T + t] = e.ids[t];
      if (e.target[t + 1]) {
        labels[b * T + t] = e.ids[t + 1];
        targets++;
      }
    }
  });
  return { B, T, ids, labels, targets };
}

export class BatchLoader {
  epoch = 0;
  cursor = 0;
  #order: number[] | null = null;
  #orderEpoch = -1;

  constructor(readonly examples: readonly Example[], readonly batchSize: number, readonly seed: number, readonly padId: number, readonly shuffle = true) {
    if (!examples.length) throw new RangeError("BatchLoader: no examples");
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batch size must be a positive integer, got ${batchSize}`);
  }

  /** Micro-batches per epoch (the last one may be smaller). */
  get batchesPerEpoch(): number {
    return Math.ceil(this.examples.length / this.batchSize);
  }

  /** The next micro-batch; a batch never spans two epochs. */
  next(): Batch {
    if (this.cursor >= this.examples.length) {
      this.epoch++;
      this.cursor = 0;
    }
    const order = this.orderOf(this.epoch);
    const end = Math.min(this.examples.length, this.cursor + this.batchSize);
    const batch = collate(
      order.slice(this.cursor, end).map((i) => this.examples[i]),
      this.padId,
    );
    this.cursor = end;
    return batch;
  }

  private orderOf(epoch: number): number[] {
    if (this.#orderEpoch !== epoch) {
      this.#order = this.shuffle
        ? permutation(this.examples.length, new Rng((this.seed ^ Math.imul(epoch + 1, 0x9e3779b1)) >>> 0))
        : Array.from({ length: this.examples.length }, (_, i) => i);
      this.#orderEpoch = epoch;
    }
    return this.#order as number[];
  }

  state(): LoaderState {
    return { epoch: this.epoch, cursor: this.cursor };
  }

  load(s: LoaderState): void {
    this.epoch = s.epoch;
    this.cursor = s.cursor;
  }
}

/** Fixed-order batches over a whole split (evaluation). */
export function* batchesOf(examples: readonly Example[], batchSize: number, padId: number): Generator<Batch> {
  for (let i = 0; i < examples.length; i += batchSize) yield collate(examples.slice(i, i + batchSize), padId);
}
