/**
 * Per-layer key/value cache for incremental decoding. Where the backend can write into a storage
 * (Backend.copyInto), each layer holds one k and one v storage [B, Hkv, C, D] with room for C
 * positions: new positions are written in place and readers see the filled prefix, so a decode
 * step copies one row per layer instead of the whole cache. C is the capacity asked for at
 * creation (a server knows prompt + max tokens), else it starts small and doubles. Elsewhere each
 * `update` concatenates onto the old tensors. Either way the cache holds exactly two storages per
 * layer whatever the scope it is called from (they are `keep()`-ed out of it).
 */
import { type DecodeCache, type Tensor, canCopyInto, concat, copyInto, keep, zeros } from "@lowrank/tensor";

export interface KVCacheOptions {
  /** Positions to make room for at the first write (default 32; more are added by doubling). */
  capacity?: number;
}

export class KVCache {
  /** Per layer: the k and v storages ([B, Hkv, C, D] in place, [B, Hkv, length, D] concatenated). */
  readonly #keys: (Tensor | null)[];
  readonly #values: (Tensor | null)[];
  readonly #capacity: number;
  /** Positions already cached (the next token's position). */
  length = 0;

  constructor(readonly numLayers: number, opts: KVCacheOptions = {}) {
    this.#keys = new Array(numLayers).fill(null);
    this.#values = new Array(numLayers).fill(null);
    this.#capacity = Math.max(1, opts.capacity ?? 32);
  }

  /** Append k, v [B, Hkv, T, D] for `layer`; returns the whole cached k, v [B, Hkv, S, D] (views, or tensors owned by the cache). */
  update(layer: number, k: Tensor, v: Tensor): [Tensor, Tensor] {
    const T = k.shape[2];
    if (!canCopyInto(k)) {
      const grow = (old: Tensor | null, t: Tensor): Tensor => {
        const next = keep(old ? concat([old, t], 2) : t.contiguous());
        old?.dispose();
        return next;
      };
      this.#keys[layer] = grow(this.#keys[layer], k);
      this.#values[layer] = grow(this.#values[layer], v);
      return [this.#keys[layer] as Tensor, this.#values[layer] as Tensor];
    }
    const [K, V] = this.#reserve(layer, k, T);
    copyInto(K.narrow(2, this.length, T), k);
    copyInto(V.narrow(2, this.length, T), v);
    return [K.narrow(2, 0, this.length + T), V.narrow(2, 0, this.length + T)];
  }

  /**
   * `layer`'s storages with room for one more position, for attentionDecode to append to in place;
   * null when nothing is cached yet or the cache grows by concatenation (use `update`).
   */
  slot(layer: number): DecodeCache | null {
    const k = this.#keys[layer];
    if (!k || !canCopyInto(k)) return null;
    const [K, V] = this.#reserve(layer, k, 1);
    return { k: K, v: V, length: this.length };
  }

  /** The cached k, v of `layer` [B, Hkv, length, D] (the cache's own; not to be disposed), or null when empty. */
  layer(layer: number): [Tensor, Tensor] | null {
    const [k, v] = [this.#keys[layer], this.#values[layer]];
    if (!k || !v) return null;
    return k.shape[2] === this.length ? [k, v] : [k.narrow(2, 0, this.length), v.narrow(2, 0, this.length)];
  }

  /** Positions held per layer before the next growth (the filled ones included); 0 before the first write. */
  get capacity(): number {
    return this.#keys[0]?.shape[2] ?? 0;
  }

  /** Storages holding length + n positions for `layer`: the current ones, or new ones (the prefix copied over) when full. */
  #reserve(layer: number, like: Tensor, n: number): [Tensor, Tensor] {
    const old = [this.#keys[layer], this.#values[layer]];
    const need = this.length + n;
    const have = old[0]?.shape[2] ?? 0;
    if (need <= have) return old as [Tensor, Tensor];
    const C = Math.max(need, have ? have * 2 : this.#capacity);
    const [B, H, , D] = like.shape;
    const opts = { dtype: like.dtype, backend: like.backend }; // `like` may be the old storage, freed below
    const fresh = old.map((o) => {
      const t = keep(zeros([B, H, C, D], opts));
      if (o && this.length) copyInto(t.narrow(2, 0, this.length), o.narrow(2, 0, this.length));
      o?.dispose();
      return t;
    });
    this.#keys[layer] = fresh[0];
    this.#values[layer] = fresh[1];
    return fresh as [Tensor, Tensor];
  }

  /** Called by the model once every layer has seen `n` new positions. */
  advance(n: number): void {
    this.length += n;
  }

  /** Drop all cached positions (the cache can be reused for a new sequence). */
  reset(): void {
    for (const list of [this.#keys, this.#values]) {
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
