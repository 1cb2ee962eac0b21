/**
 * Activation recomputation per decoder layer (transformers' gradient_checkpointing), from outside
 * nn: each `model.layers.N` is replaced (setSubmodule) by a wrapper whose forward runs the layer
 * under tensor's `recompute()`, so only the layer's input is kept and its activations are
 * recomputed in backward. The wrapper registers the layer's children under their own names, so
 * parameter names (and saved adapters) do not change. Under noGrad (eval, generation with a KV
 * cache) recompute() just runs the layer.
 *
 * A frozen embedding feeding the first layer needs no "enable_input_require_grads" here:
 * tensor's recompute() attaches its node even when no input requires grad.
 *
 * Dropout inside the layer (LoRA's) draws from counter-based streams whose counters advance on
 * every forward; recompute() itself records those draws and replays them in the second forward
 * (as torch's preserve_rng_state), so the wrapper does nothing about randomness.
 */
import { type LayerContext, type LlamaForCausalLM, Module } from "@lowrank/nn";
import { dropoutStreamMap } from "@lowrank/lora";
import { type CounterStream, type Tensor, recompute } from "@lowrank/tensor";

type Layer = Module & { forward(x: Tensor, ctx: LayerContext): Tensor };

export class RecomputedLayer extends Module {
  constructor(readonly inner: Layer) {
    super();
    const own = inner.namedParameters().length - inner.children().reduce((n, [, c]) => n + c.namedParameters().length, 0);
    if (own !== 0) throw new Error("RecomputedLayer: the layer has parameters of its own; only children are re-registered");
    for (const [name, child] of inner.children()) this.registerModule(name, child);
  }

  forward(x: Tensor, ctx: LayerContext): Tensor {
    return recompute((h) => this.inner.forward(h, ctx), x);
  }
}

/** Wrap every decoder layer in a RecomputedLayer; returns a function that puts the original layers back. */
export function recomputeLayers(model: LlamaForCausalLM): () => void {
  const n = model.config.num_hidden_layers;
  const originals: Layer[] = [];
  for (let i = 0; i < n; i++) {
    const path = `model.layers.${i}`;
    const layer = model.getSubmodule(path) as Layer;
    if (layer instanceof RecomputedLayer) return () => {};
    originals.push(layer);
    model.setSubmodule(path, new RecomputedLayer(layer));
  }
  return () => originals.forEach((l, i) => model.setSubmodule(`model.layers.${i}`, l));
}

/** A LoRA dropout stream (tensor's CounterStream); kept under this name for the trainer's API. */
export type DropoutStream = CounterStream;

/** Every LoRA dropout stream in a model, by "<module path>:<adapter>" (lora's dropoutStreamMap). */
export { dropoutStreamMap };
