/**
 * Activation recomputation (torch calls it gradient checkpointing): run a block without keeping its
 * activations, and recompute them during backward. Memory for a block drops from all of its
 * intermediates to its inputs.
 * The block must be deterministic given its inputs and its random draws: the draws it makes from
 * counter-based streams (drawCounter: LoRA dropout) are recorded, and the recompute replays them
 * from the same positions, as torch's checkpoint(preserve_rng_state=True) does.
 */
import type { GradCtx } from "./autograd.ts";
import { enableGrad, isGradEnabled, noGrad, registerGradRules } from "./autograd.ts";
import { type CounterStream, recordDraws, replayDraws } from "./random.ts";
import type { Tensor } from "./tensor.ts";

interface RecomputeParams {
  fn: (...xs: Tensor[]) => Tensor;
  /** Where each stream the forward drew from stood before its first draw. */
  draws: Map<CounterStream, number>;
}

export function recompute(fn: (...xs: Tensor[]) => Tensor, ...inputs: Tensor[]): Tensor {
  if (!isGradEnabled()) return fn(...inputs);
  const draws = new Map<CounterStream, number>();
  const out = recordDraws(draws, () => noGrad(() => fn(...inputs)));
  // Parameters inside `fn` may require grad even when no input does (a LoRA layer behind a frozen
  // embedding), so the node is attached unconditionally; backward finds out by recomputing.
  const saved = inputs.map((t) => t.alias(t, false));
  out.requiresGrad = true;
  out._node = {
    op: "recompute",
    inputs,
    ctx: {
      saved,
      out: null,
      inShapes: inputs.map((t) => t.shape),
      inDtypes: inputs.map((t) => t.dtype),
      needs: inputs.map((t) => t.requiresGrad),
      params: { fn, draws } satisfies RecomputeParams,
    },
  };
  return out;
}

export const recomputeGradRule = {
  recompute: {
    backward: (c: GradCtx, g: Tensor) => {
      const { fn, draws } = c.params as RecomputeParams;
      const xs = c.saved.map((s, i) => {
        const x = (s as Tensor).detach();
        if (c.needs[i]) x.setRequiresGrad();
        return x;
      });
      const y = replayDraws(draws, () => enableGrad(() => fn(...xs)));
      if (y.requiresGrad) y.backward(g);
      return xs.map((x) => x.grad);
    },
  },
};
registerGradRules(recomputeGradRule);
