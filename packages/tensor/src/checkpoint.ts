/**
 * Gradient checkpointing: run a block without keeping its activations, and recompute them during
 * backward. Memory for a block drops from all of its intermediates to its inputs.
 * The block must be deterministic given its inputs (dropout here uses explicit seeds, so it is).
 */
import type { GradCtx } from "./autograd.ts";
import { enableGrad, isGradEnabled, noGrad, registerGradRules } from "./autograd.ts";
import type { Tensor } from "./tensor.ts";

export function checkpoint(fn: (...xs: Tensor[]) => Tensor, ...inputs: Tensor[]): Tensor {
  if (!isGradEnabled()) return fn(...inputs);
  const out = noGrad(() => fn(...inputs));
  // Parameters inside `fn` may require grad even when no input does (a LoRA layer behind a frozen
  // embedding), so the node is attached unconditionally; backward finds out by recomputing.
  const saved = inputs.map((t) => t.alias(t, false));
  out.requiresGrad = true;
  out._node = {
    op: "checkpoint",
    inputs,
    ctx: { saved, out: null, inShapes: inputs.map((t) => t.shape), inDtypes: inputs.map((t) => t.dtype), needs: inputs.map((t) => t.requiresGrad), params: fn },
  };
  return out;
}

export const checkpointGradRule = {
  checkpoint: {
    backward: (c: GradCtx, g: Tensor) => {
      const fn = c.params as (...xs: Tensor[]) => Tensor;
      const xs = c.saved.map((s, i) => {
        const x = (s as Tensor).detach();
        if (c.needs[i]) x.setRequiresGrad();
        return x;
      });
      const y = enableGrad(() => fn(...xs));
      if (y.requiresGrad) y.backward(g);
      return xs.map((x) => x.grad);
    },
  },
};
registerGradRules(checkpointGradRule);
