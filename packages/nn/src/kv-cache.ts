/**
 * Per-layer key/value cache for incremental decoding. Each `update` concatenates the new
 * positions onto the old tensors and frees them, so the cache holds exactly two tensors per layer
 * whatever the scope it is called from (the new ones are `keep()`-ed out of it).
 */
import { type Tensor, concat, keep } from "@lowrank/tensor";

export class KVCache {
  readonly keys: (Tensor | null)[];
  readonly values: (Tensor | null)[];
  /** Positions already cached (the next token's position). */
  length = 0;

  constructor(readonly numLayers: number) {
    this.keys = new Array(numLayers).fill(null);
    this.values = new Array(numLayers).fill(null);
  }

  /** Append k, v [B, Hkv, T, D] for `layer`; returns the whole cached k, v [B, Hkv, S, D] (owned by the cache). */
  update(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const grow = (old: Tensor | null, t: Tensor): Tensor => {
      const next = keep(old ? concat([old, t], 2) : t.contiguous());
      old?.dispose();
      return next;
    };
    this.keys[layer] = grow(this.keys[layer], k);
    this.values[layer] = grow(this.values[layer], v);
    return [this.keys[layer] as Tensor, this.values[layer] as Tensor];
  }

  /** Put `layer`'s whole cached k, v (grown elsewhere, e.g. attentionDecode) in place of the old ones. */
  replace(layer: number, k: Tensor, v: Tensor): void {
    this.keys[layer]?.dispose();
    this.values[layer]?.dispose();
    this.keys[layer] = keep(k);
    this.values[layer] = keep(v);
  }

  /** Called by the model once every layer has seen `n` new positions. */
  advance(n: number): void {
    this.length += n;
  }

  /** Drop all cached positions (the cache can be reused for a new sequence). */
  reset(): void {
    for (const list of [this.keys, this.values]) {
      for (let i = 0; i < list.length; i++) {
        list[i]?.dispose();
        list[i] = null;
      }
    }
    this.length = 0;
  }

  dispose(): void {
    this.reset();
  }
}
