/**
 * QuantizedLinear: bitsandbytes' Linear4bit. A frozen NF4/FP4 weight [out, in] stays packed on
 * the backend (u8 codes, absmax, code tables) and forward runs through `matmul4bit`, so the
 * input gradient flows and the weight gets none. The buffers carry bnb's state-dict names, so a
 * 4-bit model saves and loads as a bnb-4bit Hugging Face directory:
 *
 *   weight                                   u8  [ceil(n/2), 1]  packed codes
 *   weight.absmax                            u8 [nBlocks] with double quant, else f32
 *   weight.quant_map                         f32 [16]
 *   weight.nested_absmax                     f32 [ceil(nBlocks/256)]  (double quant)
 *   weight.nested_quant_map                  f32 [256]                (double quant)
 *   weight.quant_state.bitsandbytes__nf4     u8 [len]  the quant-state JSON (or __fp4)
 *   bias                                     dense, optional (a parameter)
 */
import {
  type Backend,
  type DType,
  type Quant4bitWeight,
  type Tensor,
  checkQuant4bitWeight,
  dequantize4bitWeight,
  getDefaultBackend,
  keep,
  matmul4bit,
  scope,
  tensor,
} from "@lowrank/tensor";
import {
  type NestedAbsmax,
  type QuantDtype,
  type QuantizeOptions,
  type QuantState,
  type QuantType,
  NESTED_BLOCKSIZE,
  isNested,
  quantStateJson,
  quantize4bit,
} from "@lowrank/nf4";
import type { Linear } from "./layers.ts";
import { Module } from "./module.ts";

/** Activation dtypes QuantizedLinear computes in. */
export type ComputeDtype = "f32" | "f16" | "bf16";

export interface QuantizedLinearOptions {
  backend?: Backend;
  /** dtype forward computes in (default f32; f16 where the backend has it). Inputs are cast to it and the output back. */
  computeDtype?: ComputeDtype;
  /** A dense bias [out]; the layer takes ownership. */
  bias?: Tensor | null;
  /** The quant-state JSON bytes to keep as they are (from a file); default: written like bnb does. */
  stateJson?: Uint8Array;
}

const DTYPE_LABEL: Record<DType, QuantDtype | undefined> = { f32: "float32", f16: "float16", bf16: "bfloat16", i32: undefined, u8: undefined };

/** The quant-state dtype label ("float32", ...) of a tensor dtype, for the JSON bnb stores. */
export function quantDtypeOf(dtype: DType): QuantDtype {
  const label = DTYPE_LABEL[dtype];
  if (!label) throw new TypeError(`no bitsandbytes dtype label for ${dtype}; only float weights are quantized`);
  return label;
}

const B = {
  packed: "weight",
  absmax: "weight.absmax",
  quantMap: "weight.quant_map",
  nestedAbsmax: "weight.nested_absmax",
  nestedMap: "weight.nested_quant_map",
  state: (t: QuantType) => `weight.quant_state.bitsandbytes__${t}`,
} as const;

export class QuantizedLinear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly computeDtype: ComputeDtype;
  readonly bias: Tensor | null;
  #quantType: QuantType;
  #blocksize: number;
  #dtype: QuantDtype;
  #nestedOffset: number | null;
  readonly #backend: Backend;

  /** Build from a host quant state (nf4's `quantize4bit` or `fromBnbTensors`); its shape must be [out, in]. */
  constructor(state: QuantState, opts: QuantizedLinearOptions = {}) {
    super();
    if (state.shape.length !== 2) throw new RangeError(`QuantizedLinear: quant state shape [${state.shape.join(", ")}] is not [out, in]`);
    [this.outFeatures, this.inFeatures] = state.shape;
    this.#backend = opts.backend ?? opts.bias?.backend ?? getDefaultBackend();
    this.computeDtype = opts.computeDtype ?? "f32";
    if (!this.#backend.dtypes.includes(this.computeDtype)) {
      throw new TypeError(`QuantizedLinear: backend ${this.#backend.name} has no ${this.computeDtype}; use computeDtype "f32"`);
    }
    const bias = opts.bias ?? null;
    if (bias && (bias.rank !== 1 || bias.shape[0] !== this.outFeatures)) {
      throw new RangeError(`QuantizedLinear [${this.outFeatures}, ${this.inFeatures}]: bias ${bias.describe()} is not [${this.outFeatures}]`);
    }
    this.bias = this.registerParameter("bias", bias);
    this.#quantType = state.quantType;
    this.#blocksize = state.blocksize;
    this.#dtype = state.dtype;
    this.#nestedOffset = null;
    this.#setState(state, opts.stateJson);
  }

  /** Quantize a dense Linear's weight (default NF4 + double quant, blocksize 64); the bias moves over. */
  static async fromLinear(linear: Linear, opts: QuantizeOptions & Omit<QuantizedLinearOptions, "bias"> = {}): Promise<QuantizedLinear> {
    const w = linear.weight;
    const values = (await w.read()) as Float32Array; // halves decode to f32 exactly
    const state = quantize4bit(values, { ...opts, shape: [linear.outFeatures, linear.inFeatures], dtype: opts.dtype ?? quantDtypeOf(w.dtype) });
    return new QuantizedLinear(state, { backend: w.backend, computeDtype: opts.computeDtype, bias: linear.bias });
  }

  get quantType(): QuantType {
    return this.#quantType;
  }
  get blocksize(): number {
    return this.#blocksize;
  }
  get doubleQuant(): boolean {
    return this.#nestedOffset !== null;
  }
  /** The original weight dtype recorded in the quant state ("float32", "bfloat16", ...). */
  get weightDtype(): QuantDtype {
    return this.#dtype;
  }

  /** The packed weight as the kernel sees it (views of this layer's buffers; do not dispose). */
  get weight(): Quant4bitWeight {
    const buf = (name: string) => this.getBuffer(name) as Tensor;
    return {
      packed: buf(B.packed),
      absmax: buf(B.absmax),
      code: buf(B.quantMap),
      nested:
        this.#nestedOffset === null
          ? undefined
          : { absmax: buf(B.nestedAbsmax), code: buf(B.nestedMap), offset: this.#nestedOffset, blocksize: NESTED_BLOCKSIZE },
      blocksize: this.#blocksize,
      outFeatures: this.outFeatures,
      inFeatures: this.inFeatures,
    };
  }

  /** x [..., in] -> [..., out]: x · dequant(W)ᵀ (+ bias) in the compute dtype, returned in x's dtype. */
  forward(x: Tensor): Tensor {
    return scope(() => {
      const xc = x.dtype === this.computeDtype ? x : x.cast(this.computeDtype);
      let y = matmul4bit(xc, this.weight); // (..., out)
      if (this.bias) y = y.add(this.bias.dtype === y.dtype ? this.bias : this.bias.cast(y.dtype));
      return y.dtype === x.dtype ? y : y.cast(x.dtype);
    });
  }

  /** The weight [out, in] as forward sees it, as a new tensor the caller disposes (default f32). No gradient. */
  dequantizeWeight(dtype: DType = "f32"): Tensor {
    return dequantize4bitWeight(this.weight, dtype);
  }

  /** Same as dequantizeWeight (the name @lowrank/lora's base-layer contract uses). */
  dequantize(dtype: DType = "f32"): Tensor {
    return this.dequantizeWeight(dtype);
  }

  /** The stored state read back to the host (for merging, re-saving, or comparing with nf4). */
  async quantState(): Promise<QuantState> {
    const read = async (name: string) => (await (this.getBuffer(name) as Tensor).read()) as never;
    const absmax: QuantState["absmax"] =
      this.#nestedOffset === null
        ? await read(B.absmax)
        : {
            qabsmax: await read(B.absmax),
            nestedAbsmax: await read(B.nestedAbsmax),
            nestedOffset: this.#nestedOffset,
            nestedBlocksize: NESTED_BLOCKSIZE,
            nestedCode: await read(B.nestedMap),
          };
    return {
      packed: await read(B.packed),
      absmax,
      quantMap: await read(B.quantMap),
      quantType: this.#quantType,
      blocksize: this.#blocksize,
      shape: [this.outFeatures, this.inFeatures],
      dtype: this.#dtype,
    };
  }

  /**
   * Quantize a new dense weight [out, in] with this layer's own settings (type, blocksize, double
   * quant) and store it in place of the old one (what merging an adapter into a 4-bit base needs).
   */
  async requantize(weight: Tensor): Promise<void> {
    if (weight.rank !== 2 || weight.shape[0] !== this.outFeatures || weight.shape[1] !== this.inFeatures) {
      throw new RangeError(`requantize: ${weight.describe()} is not [${this.outFeatures}, ${this.inFeatures}]`);
    }
    const values = (await weight.read()) as Float32Array;
    this.#setState(
      quantize4bit(values, {
        quantType: this.#quantType,
        blocksize: this.#blocksize,
        doubleQuant: this.doubleQuant,
        shape: [this.outFeatures, this.inFeatures],
        dtype: this.#dtype,
      }),
    );
  }

  /**
   * Upload a state's arrays as this layer's buffers, replacing earlier ones of the same names
   * (requantize keeps the type and double quant, so the key set never changes).
   */
  #setState(state: QuantState, stateJson?: Uint8Array): void {
    if (state.shape[0] !== this.outFeatures || state.shape[1] !== this.inFeatures) {
      throw new RangeError(`QuantizedLinear [${this.outFeatures}, ${this.inFeatures}]: quant state has shape [${state.shape.join(", ")}]`);
    }
    const backend = this.#backend;
    const up = (name: string, data: Uint8Array | Float32Array, shape: number[]) =>
      this.registerBuffer(name, keep(tensor(data, { shape, dtype: data instanceof Uint8Array ? "u8" : "f32", backend })));
    const n = this.outFeatures * this.inFeatures;
    up(B.packed, state.packed, [(n + 1) >> 1, 1]);
    const a = state.absmax;
    if (isNested(a)) {
      if (a.nestedBlocksize !== NESTED_BLOCKSIZE) throw new RangeError(`QuantizedLinear: nested blocksize ${a.nestedBlocksize} (bitsandbytes only has 256)`);
      up(B.absmax, a.qabsmax, [a.qabsmax.length]);
      up(B.quantMap, state.quantMap, [16]);
      up(B.nestedAbsmax, a.nestedAbsmax, [a.nestedAbsmax.length]);
      up(B.nestedMap, (a as NestedAbsmax).nestedCode, [256]);
      this.#nestedOffset = a.nestedOffset;
    } else {
      up(B.absmax, a, [a.length]);
      up(B.quantMap, state.quantMap, [16]);
      this.#nestedOffset = null;
    }
    const json = stateJson ?? new TextEncoder().encode(quantStateJson(state));
    up(B.state(state.quantType), json, [json.length]);
    this.#quantType = state.quantType;
    this.#blocksize = state.blocksize;
    this.#dtype = state.dtype;
    checkQuant4bitWeight(this.weight);
  }
}
