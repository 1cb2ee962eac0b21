/**
 * What a LoRA layer can wrap: nn's dense `Linear`, or any quantized linear that offers the small
 * contract below (the 4-bit QuantizedLinear in @lowrank/nn satisfies it). Everything LoRA needs
 * from its base goes through these helpers, so the layer code never branches on a class.
 */
import { type Backend, type Tensor, getDefaultBackend, noGrad } from "@lowrank/tensor";
import { Linear, type Module } from "@lowrank/nn";

/** A frozen linear layer whose weight is stored quantized. */
export interface QuantizedLinearLike extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly bias?: Tensor | null;
  /** x [..., in] -> [..., out]. */
  forward(x: Tensor): Tensor;
  /** The weight [out, in] as the forward pass sees it (a new tensor the caller disposes). */
  dequantize(dtype?: Tensor["dtype"]): Tensor;
}

/**
 * A quantized layer that can take a new dense weight: quantize `weight` [out, in] with the
 * layer's own settings (type, blocksize, double quant) and replace what it stores.
 */
export interface RequantizableLinear extends QuantizedLinearLike {
  requantize(weight: Tensor): void | Promise<void>;
}

export type BaseLayer = Linear | QuantizedLinearLike;

export function isQuantizedLinear(m: unknown): m is QuantizedLinearLike {
  const q = m as Partial<QuantizedLinearLike> | null;
  return (
    !!q &&
    !(m instanceof Linear) &&
    typeof q.dequantize === "function" &&
    typeof q.forward === "function" &&
    Number.isSafeInteger(q.inFeatures) &&
    Number.isSafeInteger(q.outFeatures)
  );
}

export function isRequantizable(m: unknown): m is RequantizableLinear {
  return isQuantizedLinear(m) && typeof (m as unknown as { requantize?: unknown }).requantize === "function";
}

/** A layer LoRA can wrap (dense Linear or the quantized contract). */
export function isLinearLike(m: unknown): m is BaseLayer {
  return m instanceof Linear || isQuantizedLinear(m);
}

/** The base's weight [out, in] in f32 as a new tensor (dequantized for 4-bit bases). No gradient. */
export function denseWeightF32(base: BaseLayer): Tensor {
  return noGrad(() => (base instanceof Linear ? base.weight.cast("f32") : base.dequantize("f32")));
}

export function baseBias(base: BaseLayer): Tensor | null {
  return base.bias ?? null;
}

/** The backend the base lives on (its first parameter or buffer). */
export function baseBackend(base: BaseLayer): Backend {
  if (base instanceof Linear) return base.weight.backend;
  const first = [...base.stateDict().values()][0] ?? base.parameters()[0];
  return first ? first.backend : getDefaultBackend();
}
