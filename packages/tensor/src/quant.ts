/**
 * Frozen 4-bit weights (NF4/FP4 in bitsandbytes' layout, docs/nf4-format.md) in the core:
 * `matmul4bit` with its gradient rule, and `dequantize4bitWeight`.
 *
 * With the backend's fused kernel (FusedKernels.matmul4bit) the weight stays packed on the
 * device. Without it the weight is dequantized with primitives (cast, i32 div, gather, mul) and
 * multiplied with the ordinary matmul: the same f32 values, so both paths agree within f32
 * rounding. Either way the op is ONE autograd node: backward recomputes from the packed weight
 * (no dense copy is saved, which is the point of QLoRA) and only x gets a gradient,
 * gx = matmul4bit(g, W, !transpose), as bnb's MatMul4Bit.
 */
import type { Input, Quant4bitInputs } from "./backend.ts";
import type { GradCtx } from "./autograd.ts";
import { noGrad, record, registerGradRules } from "./autograd.ts";
import { type DType, isFloat } from "./dtype.ts";
import * as ops from "./ops.ts";
import { scope } from "./scope.ts";
import { type Tensor, arange, fromHandle, full } from "./tensor.ts";

/** A frozen 4-bit weight W [outFeatures, inFeatures] held as tensors on one backend. */
export interface Quant4bitWeight {
  /** u8, ceil(n/2) elements in any shape (bnb stores [ceil(n/2), 1]); first element in the high nibble. */
  readonly packed: Tensor;
  /** f32 [nBlocks] absmax per block, or u8 [nBlocks] codes into nested.code with double quantization. */
  readonly absmax: Tensor;
  /** f32 [16]: the code table (quant_map). */
  readonly code: Tensor;
  /** Double quantization: absmax = f32(f32(nested.code[q] * nested.absmax[b / nested.blocksize]) + offset). */
  readonly nested?: { readonly absmax: Tensor; readonly code: Tensor; readonly offset: number; readonly blocksize: number };
  /** Elements per block (bnb: a power of two in 32..4096). */
  readonly blocksize: number;
  readonly outFeatures: number;
  readonly inFeatures: number;
}

/** The tensors of a weight, in a fixed order (packed, absmax, code, nested absmax, nested code). */
export function quant4bitTensors(w: Quant4bitWeight): Tensor[] {
  return w.nested ? [w.packed, w.absmax, w.code, w.nested.absmax, w.nested.code] : [w.packed, w.absmax, w.code];
}

/** Throws a RangeError/TypeError naming the first buffer whose dtype or size does not fit. */
export function checkQuant4bitWeight(w: Quant4bitWeight): void {
  const { outFeatures: out, inFeatures: inF, blocksize } = w;
  if (!(Number.isSafeInteger(out) && out > 0 && Number.isSafeInteger(inF) && inF > 0)) {
    throw new RangeError(`4-bit weight: outFeatures ${out} and inFeatures ${inF} must be positive integers`);
  }
  if (!(Number.isSafeInteger(blocksize) && blocksize >= 2 && blocksize % 2 === 0)) {
    throw new RangeError(`4-bit weight: blocksize must be an even positive integer, got ${blocksize}`);
  }
  const n = out * inF;
  const nb = Math.ceil(n / blocksize);
  const expect = (t: Tensor, what: string, dtype: DType, size: number) => {
    if (t.dtype !== dtype || t.size !== size) {
      throw new RangeError(`4-bit weight [${out}, ${inF}] blocksize ${blocksize}: ${what} is ${t.describe()}, expected ${dtype} with ${size} elements`);
    }
    if (!t.isContiguous) throw new RangeError(`4-bit weight: ${what} ${t.describe()} must be contiguous`);
    if (t.backend !== w.packed.backend) throw new Error(`4-bit weight: ${what} lives on ${t.backend.name}, packed on ${w.packed.backend.name}`);
  };
  expect(w.packed, "packed", "u8", (n + 1) >> 1);
  expect(w.code, "code", "f32", 16);
  if (w.nested) {
    const nbs = w.nested.blocksize;
    if (!(Number.isSafeInteger(nbs) && nbs > 0)) throw new RangeError(`4-bit weight: nested blocksize must be a positive integer, got ${nbs}`);
    if (!Number.isFinite(w.nested.offset)) throw new RangeError(`4-bit weight: nested offset must be finite, got ${w.nested.offset}`);
    expect(w.absmax, "absmax (nested codes)", "u8", nb);
    expect(w.nested.absmax, "nested absmax", "f32", Math.ceil(nb / nbs));
    expect(w.nested.code, "nested code", "f32", 256);
  } else {
    expect(w.absmax, "absmax", "f32", nb);
  }
}

/** A contiguous tensor as a flat 1-D kernel input (the kernel never sees bnb's [n/2, 1] shape). */
function flat(t: Tensor): Input {
  return { handle: t.input.handle, dtype: t.dtype, view: { shape: [t.size], strides: [1], offset: t.offset } };
}

function kernelInputs(w: Quant4bitWeight): Quant4bitInputs {
  return {
    packed: flat(w.packed),
    absmax: flat(w.absmax),
    code: flat(w.code),
    nested: w.nested && { absmax: flat(w.nested.absmax), code: flat(w.nested.code), offset: w.nested.offset, blocksize: w.nested.blocksize },
    blocksize: w.blocksize,
    outFeatures: w.outFeatures,
    inFeatures: w.inFeatures,
  };
}

/** float32 absmax per block [nBlocks], resolving double quantization with primitives. */
function absmaxF32(w: Quant4bitWeight): Tensor {
  const a = w.absmax.reshape([-1]);
  if (!w.nested) return a;
  const nb = a.size;
  const q = ops.cast(a, "i32");
  const block = arange(nb, { backend: a.backend, dtype: "i32" }).div(w.nested.blocksize); // i32 div truncates
  const s = ops.gather(w.nested.code, q, 0).mul(ops.gather(w.nested.absmax.reshape([-1]), block, 0));
  return s.add(full([], w.nested.offset, { backend: a.backend }));
}

/**
 * W [outFeatures, inFeatures] dequantized with primitives, on any backend: unpack the nibbles
 * (u8 -> i32, hi = b / 16, lo = b - 16 hi), gather the code table, multiply by the block's
 * absmax in f32 (one rounding, as bnb), then cast to `dtype`. No gradient.
 */
export function dequantize4bitWeight(w: Quant4bitWeight, dtype: DType = "f32"): Tensor {
  checkQuant4bitWeight(w);
  return noGrad(() =>
    scope(() => {
      const n = w.outFeatures * w.inFeatures;
      const nb = Math.ceil(n / w.blocksize);
      const bytes = ops.cast(w.packed.reshape([-1]), "i32"); // [ceil(n/2)]
      const hi = bytes.div(16);
      const lo = bytes.sub(hi.mul(16));
      const q = ops.stack([hi, lo], 1).reshape([-1]); // element order: even elements from the high nibble
      let values = ops.gather(w.code, q, 0); // f32 [2 ceil(n/2)]
      // Pad to whole blocks so every block scales with one broadcast multiply.
      const pad = nb * w.blocksize - values.size;
      if (pad > 0) values = ops.concat([values, full([pad], 0, { backend: values.backend })], 0);
      const deq = values.reshape([nb, w.blocksize]).mul(absmaxF32(w).reshape([nb, 1]));
      const W = deq.reshape([-1]).narrow(0, 0, n).reshape([w.outFeatures, w.inFeatures]);
      return dtype === "f32" ? W.contiguous() : W.cast(dtype);
    }),
  );
}

interface Matmul4bitParams {
  transpose: boolean;
  blocksize: number;
  outFeatures: number;
  inFeatures: number;
  nested: { offset: number; blocksize: number } | null;
}

/**
 * transpose = false: x [..., inFeatures] -> x · Wᵀ [..., outFeatures] (a Linear4bit forward).
 * transpose = true:  x [..., outFeatures] -> x · W [..., inFeatures] (its input gradient).
 * x is f32/f16/bf16 and the result has x's dtype. Only x is differentiable.
 */
export function matmul4bit(x: Tensor, w: Quant4bitWeight, transpose = false): Tensor {
  return scope(() => {
    checkQuant4bitWeight(w);
    const K = transpose ? w.outFeatures : w.inFeatures;
    const N = transpose ? w.inFeatures : w.outFeatures;
    if (!isFloat(x.dtype)) throw new TypeError(`matmul4bit: x must be a float tensor, got ${x.describe()}`);
    if (x.rank < 1 || x.shape[x.rank - 1] !== K) {
      throw new RangeError(`matmul4bit: x ${x.describe()} must end in ${K} (W [${w.outFeatures}, ${w.inFeatures}]${transpose ? ", transposed" : ""})`);
    }
    if (x.backend !== w.packed.backend) throw new Error(`matmul4bit: x lives on ${x.backend.name}, the weight on ${w.packed.backend.name}`);
    const lead = x.shape.slice(0, -1);
    let x2 = x.reshape([-1, K]); // (rows, K)
    // The kernel contract covers f32 and f16 activations; bf16 takes the primitive path.
    const kernel = x.dtype === "bf16" ? undefined : x.backend.fused?.matmul4bit;
    let y: Tensor;
    if (kernel) {
      if (!x2.isContiguous) x2 = x2.contiguous();
      y = fromHandle(x.backend, kernel(x2.input, kernelInputs(w), transpose), [x2.shape[0], N], x.dtype);
    } else {
      const xin = x2;
      y = noGrad(() => {
        const W = dequantize4bitWeight(w, x.dtype); // (out, in)
        return transpose ? xin.matmul(W) : xin.matmul(W.T);
      });
    }
    const params: Matmul4bitParams = {
      transpose,
      blocksize: w.blocksize,
      outFeatures: w.outFeatures,
      inFeatures: w.inFeatures,
      nested: w.nested ? { offset: w.nested.offset, blocksize: w.nested.blocksize } : null,
    };
    // The weight's tensors ride along as extra saved tensors: backward holds its own references.
    y = record(y, "matmul4bit", [x2], params, quant4bitTensors(w));
    return y.reshape([...lead, N]);
  });
}

/** The weight rebuilt from what the node saved (saved[0] is x's slot, unused). */
function savedWeight(c: GradCtx): Quant4bitWeight {
  const p = c.params as Matmul4bitParams;
  const t = (i: number) => c.saved[i] as Tensor;
  return {
    packed: t(1),
    absmax: t(2),
    code: t(3),
    nested: p.nested ? { absmax: t(4), code: t(5), offset: p.nested.offset, blocksize: p.nested.blocksize } : undefined,
    blocksize: p.blocksize,
    outFeatures: p.outFeatures,
    inFeatures: p.inFeatures,
  };
}

export const quantGradRules = {
  // gx = g · W for the forward (x · Wᵀ), and g · Wᵀ for the transposed op; W is frozen.
  matmul4bit: {
    backward: (c: GradCtx, g: Tensor) => [matmul4bit(g, savedWeight(c), !(c.params as Matmul4bitParams).transpose)],
  },
};
registerGradRules(quantGradRules);
