/** Gradient norm, clipping and the finite check, on the device with one read-back per step. */
import { type Tensor, noGrad, scope, sumOfSquares } from "@lowrank/tensor";

/** sqrt(sum of squares) over every gradient present (torch.nn.utils.clip_grad_norm_'s total norm). */
export async function globalGradNorm(params: readonly Tensor[]): Promise<number> {
  const total = gradNormTensor(params);
  if (!total) return 0;
  try {
    return await total.item();
  } finally {
    total.dispose();
  }
}

/**
 * The global gradient norm as a device scalar (null without gradients), so a caller can read it
 * together with other values in one host sync. One multi-tensor kernel where the backend has it
 * (WebGPU: a few dispatches for every LoRA gradient instead of three each); else the same
 * square/sum/add per tensor, in order.
 */
export function gradNormTensor(params: readonly Tensor[]): Tensor | null {
  const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
  if (!grads.length) return null;
  return noGrad(() => scope(() => sumOfSquares(grads).sqrt()));
}

/** Scale gradients so their global norm is at most maxNorm (coefficient maxNorm / (norm + 1e-6), as torch). */
export function clipGradients(params: readonly Tensor[], maxNorm: number, norm: number): boolean {
  if (!(maxNorm > 0) || !Number.isFinite(norm)) return false;
  const coef = maxNorm / (norm + 1e-6);
  if (coef >= 1) return false;
  scaleGradients(params, coef);
  return true;
}

/** g *= coef for every gradient present (clipping, and undoing a loss scale, in one pass). */
export function scaleGradients(params: readonly Tensor[], coef: number): void {
  noGrad(() => {
    for (const p of params) {
      const g = p.grad;
      if (!g) continue;
      scope(() => g.assign(g.mul(coef)));
    }
  });
}
