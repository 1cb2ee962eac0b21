/**
 * `addWeightedAdapter`: build a new adapter from existing ones (PEFT LoraModel.add_weighted_adapter),
 * computed on the host in f64. With ΔWᵢ = sᵢ·Bᵢ·Aᵢ and weights wᵢ:
 *
 *   linear  A = Σ sign(wᵢsᵢ)·√|wᵢsᵢ|·Aᵢ,  B = Σ √|wᵢsᵢ|·Bᵢ   (equal ranks; PEFT's formula: exact for one
 *           adapter, cross terms Bᵢ·Aⱼ for several, as in PEFT)
 *   cat     A = [wᵢsᵢ·Aᵢ] stacked, B = [Bᵢ] side by side         (exact Σ wᵢΔWᵢ, rank Σ rᵢ)
 *   svd     truncated SVD of Σ wᵢΔWᵢ to `svdRank` (default max rᵢ): B = U·S, A = Vᵀ (best rank-k fit)
 *
 * The new adapter has lora_alpha = r and use_rslora = false, so its scaling is 1 (the sources'
 * scalings are folded into A and B), like PEFT after its rsLoRA fix.
 */
import { type Tensor, noGrad, tensor } from "@lowrank/tensor";
import type { Module } from "@lowrank/nn";
import type { LoraConfig } from "./config.ts";
import type { LoraLinear } from "./layer.ts";
import type { PeftModel } from "./model.ts";
import { matmulMat, quantile, svdOfProduct } from "./svd.ts";

export type Combination = "linear" | "cat" | "svd";

export interface WeightedAdapterOptions {
  /** Rank of the svd result (default: the largest source rank at each module). */
  svdRank?: number;
  /** Clamp U·S and Vᵀ to ±(this quantile of their values), as PEFT's svd_clamp (default: no clamp). */
  svdClamp?: number;
}

/** Per-module rank of the combination. */
function newRank(combination: Combination, ranks: number[], svdRank: number | undefined, path: string, names: string[]): number {
  if (combination === "linear") {
    if (new Set(ranks).size !== 1)
      throw new Error(
        `addWeightedAdapter: "linear" needs equal ranks, but at ${path} adapters ${names.join(", ")} have r = ${ranks.join(", ")}; use "cat" or "svd"`,
      );
    return ranks[0];
  }
  if (combination === "cat") return ranks.reduce((a, b) => a + b, 0);
  return svdRank ?? Math.max(...ranks);
}

export async function addWeightedAdapter<M extends Module>(
  peft: PeftModel<M>,
  adapters: string[],
  weights: number[],
  adapterName: string,
  combination: Combination = "svd",
  opts: WeightedAdapterOptions = {},
): Promise<void> {
  if (adapters.length === 0) throw new Error("addWeightedAdapter: no adapters given");
  if (adapters.length !== weights.length) throw new Error(`addWeightedAdapter: ${adapters.length} adapters but ${weights.length} weights`);
  if (!weights.every(Number.isFinite)) throw new Error(`addWeightedAdapter: weights must be finite numbers, got ${JSON.stringify(weights)}`);
  if (!["linear", "cat", "svd"].includes(combination))
    throw new Error(`addWeightedAdapter: combination ${JSON.stringify(combination)} is not one of linear, cat, svd`);
  if (peft.peftConfig.has(adapterName)) throw new Error(`addWeightedAdapter: adapter '${adapterName}' already exists`);
  const configs = adapters.map((a) => {
    const c = peft.peftConfig.get(a);
    if (!c) throw new Error(`addWeightedAdapter: no adapter '${a}' (adapters: ${[...peft.peftConfig.keys()].join(", ")})`);
    return c;
  });
  const dora = adapters.filter((_, i) => configs[i].use_dora);
  if (dora.length)
    throw new Error(`addWeightedAdapter: DoRA adapters (${dora.join(", ")}) cannot be combined: their magnitude vectors have no linear combination`);
  if (configs.filter((c) => c.modules_to_save?.length).length > 1) {
    throw new Error("addWeightedAdapter: several of these adapters have modules_to_save; their full copies cannot be combined");
  }
  if (opts.svdRank !== undefined && !(Number.isSafeInteger(opts.svdRank) && opts.svdRank > 0))
    throw new Error(`addWeightedAdapter: svdRank must be a positive integer, got ${opts.svdRank}`);
  // A single adapter is always combined linearly (exact), as in PEFT.
  const how: Combination = adapters.length === 1 ? "linear" : combination;

  // Plan every layer first (ranks, shapes) so errors come before anything is added.
  const plans: { path: string; layer: LoraLinear; present: number[]; rank: number }[] = [];
  for (const [path, layer] of peft.loraLayers()) {
    const present = adapters.map((a, i) => (layer.r.has(a) ? i : -1)).filter((i) => i >= 0);
    if (!present.length) continue;
    const ranks = present.map((i) => layer.r.get(adapters[i]) as number);
    const rank = newRank(
      how,
      ranks,
      opts.svdRank,
      path,
      present.map((i) => adapters[i]),
    );
    const maxR = Math.min(layer.inFeatures, layer.outFeatures);
    if (rank > maxR) throw new Error(`addWeightedAdapter: the combined rank ${rank} at ${path} exceeds min(in, out) = ${maxR}`);
    plans.push({ path, layer, present, rank });
  }
  const rank0 = plans.length ? mostCommon(plans.map((p) => p.rank)) : configs[0].r;
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  for (const p of plans) {
    if (p.rank !== rank0) {
      rankPattern[escapeRegex(p.path)] = p.rank;
      alphaPattern[escapeRegex(p.path)] = p.rank;
    }
  }
  const config: LoraConfig = {
    ...configs[0],
    r: rank0,
    lora_alpha: rank0,
    use_rslora: false,
    lora_dropout: configs[0].lora_dropout,
    target_modules: configs.some((c) => c.exclude_modules || c.layers_to_transform !== null)
      ? plans.map((p) => p.path)
      : unionTargets(
          configs,
          plans.map((p) => p.path),
        ),
    exclude_modules: null,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: rankPattern,
    alpha_pattern: alphaPattern,
    modules_to_save: configs.find((c) => c.modules_to_save?.length)?.modules_to_save ?? null,
  };
  peft.addAdapter(adapterName, config, { zeroInit: true, strictTargets: false });
  // The full copies of modules_to_save carry over from the (single) source adapter that has them.
  for (const [, w] of peft.modulesToSaveWrappers()) {
    const from = adapters.find((a) => a !== adapterName && w.adapters().includes(a));
    if (!from) continue;
    const dst = w.modules_to_save.get(adapterName).namedParameters();
    const src = new Map(w.modules_to_save.get(from).namedParameters());
    for (const [n, t] of dst) {
      const c = noGrad(() => (src.get(n) as Tensor).add(0)); // a fresh storage: the two copies train apart
      t.assign(c);
      c.dispose();
    }
  }

  for (const { layer, present, rank } of plans) {
    const inF = layer.inFeatures;
    const outF = layer.outFeatures;
    const src = await Promise.all(
      present.map(async (i) => ({
        a: Float64Array.from((await layer.lora_A.get(adapters[i]).weight.read()) as Float32Array), // [r, in]
        b: Float64Array.from((await layer.lora_B.get(adapters[i]).weight.read()) as Float32Array), // [out, r]
        r: layer.r.get(adapters[i]) as number,
        ws: weights[i] * (layer.scaling.get(adapters[i]) as number),
      })),
    );
    let A: Float64Array;
    let B: Float64Array;
    if (how === "linear") {
      A = new Float64Array(rank * inF);
      B = new Float64Array(outF * rank);
      for (const s of src) {
        const mag = Math.sqrt(Math.abs(s.ws));
        const sign = s.ws < 0 ? -1 : 1; // the sign goes on A only, so a single adapter gives back w·ΔW
        for (let j = 0; j < A.length; j++) A[j] += sign * mag * s.a[j];
        for (let j = 0; j < B.length; j++) B[j] += mag * s.b[j];
      }
    } else {
      // Stack: Bcat [out, R] = [B1 B2 ...], Acat [R, in] = [w1 s1 A1; w2 s2 A2; ...], so Bcat·Acat = Σ wᵢΔWᵢ.
      const R = src.reduce((n, s) => n + s.r, 0);
      const Bcat = new Float64Array(outF * R);
      const Acat = new Float64Array(R * inF);
      let off = 0;
      for (const s of src) {
        for (let o = 0; o < outF; o++) for (let k = 0; k < s.r; k++) Bcat[o * R + off + k] = s.b[o * s.r + k];
        for (let k = 0; k < s.r; k++) for (let j = 0; j < inF; j++) Acat[(off + k) * inF + j] = s.ws * s.a[k * inF + j];
        off += s.r;
      }
      if (how === "cat") {
        A = Acat;
        B = Bcat;
      } else {
        ({ a: A, b: B } = truncatedFactors(Bcat, Acat, outF, R, inF, rank, opts.svdClamp));
      }
    }
    assignF32(layer.lora_A.get(adapterName).weight, A);
    assignF32(layer.lora_B.get(adapterName).weight, B);
  }
}

/** Best rank-k factors of Bcat·Acat: B = U[:, :k]·diag(S[:k]) [out, k], A = Vᵀ[:k] [k, in] (zero-padded if the product's rank is lower). */
function truncatedFactors(
  Bcat: Float64Array,
  Acat: Float64Array,
  m: number,
  R: number,
  n: number,
  k: number,
  clamp?: number,
): { a: Float64Array; b: Float64Array } {
  const d = svdOfProduct(Bcat, Acat, m, R, n);
  const kk = Math.min(k, d.k);
  const b = new Float64Array(m * k);
  const a = new Float64Array(k * n);
  for (let i = 0; i < m; i++) for (let c = 0; c < kk; c++) b[i * k + c] = d.u[i * d.k + c] * d.s[c];
  for (let c = 0; c < kk; c++) for (let j = 0; j < n; j++) a[c * n + j] = d.v[j * d.k + c];
  if (clamp !== undefined) {
    const hi = quantile(Float64Array.from([...b, ...a]), clamp);
    for (const arr of [a, b]) for (let i = 0; i < arr.length; i++) arr[i] = Math.min(hi, Math.max(-hi, arr[i]));
  }
  return { a, b };
}

function assignF32(param: Tensor, values: Float64Array): void {
  const t = tensor(Float32Array.from(values), { shape: param.shape, backend: param.backend });
  param.assign(t);
  t.dispose();
}

/** Union of list targets (PEFT ORs the sets) or "(a)|(b)" of regexes; mixed kinds fall back to the modules actually wrapped. */
function unionTargets(configs: LoraConfig[], paths: string[]): string[] | string {
  const tms = configs.map((c) => c.target_modules);
  if (tms.every((t) => Array.isArray(t))) return [...new Set((tms as string[][]).flat())];
  if (tms.every((t) => typeof t === "string")) return (tms as string[]).map((t) => `(${t})`).join("|");
  return paths;
}

function mostCommon(xs: number[]): number {
  const counts = new Map<number, number>();
  for (const x of xs) counts.set(x, (counts.get(x) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0][0];
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Σ wᵢ·sᵢ·Bᵢ·Aᵢ on the host in f64 for one layer, [out, in] row-major (what the combinations approximate). */
export async function weightedDelta(layer: LoraLinear, adapters: string[], weights: number[]): Promise<Float64Array> {
  const out = new Float64Array(layer.outFeatures * layer.inFeatures);
  for (let i = 0; i < adapters.length; i++) {
    if (!layer.r.has(adapters[i])) continue;
    const r = layer.r.get(adapters[i]) as number;
    const a = Float64Array.from((await layer.lora_A.get(adapters[i]).weight.read()) as Float32Array);
    const b = Float64Array.from((await layer.lora_B.get(adapters[i]).weight.read()) as Float32Array);
    const d = matmulMat(b, a, layer.outFeatures, r, layer.inFeatures);
    const ws = weights[i] * (layer.scaling.get(adapters[i]) as number);
    for (let j = 0; j < out.length; j++) out[j] += ws * d[j];
  }
  return out;
}
