/** The basic layers, with torch's parameter names and layouts so checkpoints load without renaming. */
import { type Tensor, addRmsNorm, embedding, rmsNorm, scope } from "@lowrank/tensor";
import { Module, type ParamOptions, makeParam } from "./module.ts";

export interface LinearOptions extends ParamOptions {
  /** Add a bias (default false: Llama-family projections have none). */
  bias?: boolean;
  /** Use this tensor as the weight instead of creating one (tied embeddings share it). */
  weight?: Tensor;
}

/** y = x W^T + b with W stored [out, in] like torch.nn.Linear. */
export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(inFeatures: number, outFeatures: number, opts: LinearOptions = {}) {
    super();
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const w = opts.weight ?? makeParam([outFeatures, inFeatures], "weight", opts);
    if (w.shape[0] !== outFeatures || w.shape[1] !== inFeatures) {
      throw new RangeError(`Linear(${inFeatures}, ${outFeatures}): weight ${w.describe()} is not [${outFeatures}, ${inFeatures}]`);
    }
    this.weight = this.registerParameter("weight", w);
    this.bias = this.registerParameter("bias", opts.bias ? makeParam([outFeatures], "bias", { ...opts, dtype: w.dtype, backend: w.backend }) : null);
  }

  /** x [..., in] -> [..., out]. Rows are flattened first so W^T (a transposed view, no copy) is not broadcast per batch. */
  forward(x: Tensor): Tensor {
    return scope(() => {
      const lead = x.shape.slice(0, -1);
      let y = x.reshape([-1, this.inFeatures]).matmul(this.weight.T); // (N, out)
      if (this.bias) y = y.add(this.bias);
      return y.reshape([...lead, this.outFeatures]);
    });
  }
}

/** Rows of a [num, dim] table picked by i32 ids. */
export class Embedding extends Module {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  readonly weight: Tensor;

  constructor(numEmbeddings: number, embeddingDim: number, opts: ParamOptions = {}) {
    super();
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
    this.weight = this.registerParameter("weight", makeParam([numEmbeddings, embeddingDim], "weight", opts));
  }

  /** ids [...] i32 -> [..., dim]. */
  forward(ids: Tensor): Tensor {
    if (ids.dtype !== "i32") throw new TypeError(`Embedding: ids must be i32, got ${ids.describe()}`);
    return embedding(this.weight, ids);
  }
}

/** RMSNorm over the last axis with a learned gain; runs as one fused kernel where the backend has it. */
export class RMSNorm extends Module {
  readonly eps: number;
  readonly weight: Tensor;

  constructor(dim: number, opts: ParamOptions & { eps?: number } = {}) {
    super();
    this.eps = opts.eps ?? 1e-6;
    this.weight = this.registerParameter("weight", makeParam([dim], "norm", opts));
  }

  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }

  /** The pre-norm residual step: [x + residual, norm(x + residual)], one fused kernel where the backend has it. */
  forwardResidual(x: Tensor, residual: Tensor): [Tensor, Tensor] {
    return addRmsNorm(x, residual, this.weight, this.eps);
  }
}
