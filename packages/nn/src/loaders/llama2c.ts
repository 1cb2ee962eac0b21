/**
 * llama2.c legacy ("version 0") checkpoints: a header of 7 little-endian int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) followed by f32 arrays
 * token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real,
 * freq_cis_imag and, only when vocab_size < 0, an unshared classifier wcls. Matrices are
 * [out][in] like torch. The result is the same LlamaForCausalLM an HF directory gives.
 */
import { type Tensor, getDefaultBackend, scope, tensor } from "@lowrank/tensor";
import { LlamaForCausalLM, parseLlamaConfig } from "../models/llama.ts";
import type { LoadOptions } from "./hf.ts";
import { readBytes } from "./files.ts";

export interface Llama2cHeader {
  dim: number;
  hidden_dim: number;
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  vocab_size: number;
  seq_len: number;
  /** vocab_size > 0 in the file: the classifier is the token embedding. */
  shared_classifier: boolean;
}

/** Magic of llama2.c's newer exports ("ak42"), which this reader does not handle. */
const V1_MAGIC = 0x616b3432;

export async function loadLlama2c(binPath: string, opts: LoadOptions = {}): Promise<LlamaForCausalLM> {
  return llama2cFromBytes(await readBytes(binPath, "a llama2.c checkpoint"), { ...opts, file: binPath });
}

export function readLlama2cHeader(bytes: Uint8Array, file = "<bytes>"): Llama2cHeader {
  if (bytes.byteLength < 28) throw new Error(`${file}: truncated: ${bytes.byteLength} bytes, shorter than the 28-byte llama2.c header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) === V1_MAGIC) {
    throw new Error(
      `${file}: llama2.c version ${dv.getInt32(4, true)} export (magic "ak42") is not supported; export with --version 0 or use the Hugging Face export`,
    );
  }
  const v = Array.from({ length: 7 }, (_, i) => dv.getInt32(4 * i, true));
  const [dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len] = v;
  const h = { dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size: Math.abs(vocab), seq_len, shared_classifier: vocab > 0 };
  const names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
  const badField = names.find((n, i) => !(Math.abs(v[i]) > 0 && Math.abs(v[i]) < 1 << 24));
  if (badField) throw new Error(`${file}: header field ${badField} = ${v[names.indexOf(badField)]} is not plausible; not a llama2.c legacy checkpoint?`);
  if (dim % n_heads !== 0 || n_heads % n_kv_heads !== 0 || (dim / n_heads) % 2 !== 0) {
    throw new Error(`${file}: header dim=${dim}, n_heads=${n_heads}, n_kv_heads=${n_kv_heads} do not describe whole (even) heads`);
  }
  return h;
}

/**
 * Row permutation taking llama2.c/Meta's interleaved RoPE layout to HF's rotate_half layout,
 * exactly transformers' convert_llama_weights_to_hf.py
 * `permute(w) = w.view(n_heads, hs // 2, 2, dim).transpose(1, 2).reshape(n_heads * hs, dim)`:
 * within each head, the rotation pair (2j, 2j+1) becomes (j, j + hs/2), so row h*hs + 2j + c
 * moves to row h*hs + c*hs/2 + j. q and k get the same permutation, so q·k is unchanged and the
 * model can always use rotate_half RoPE.
 */
export function permuteRotaryRows(w: Float32Array, nHeads: number, hs: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = hs / 2;
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < half; j++) {
      for (let c = 0; c < 2; c++) {
        const src = (h * hs + 2 * j + c) * cols;
        const dst = (h * hs + c * half + j) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

/** The HF config.json equivalent of a llama2.c header (run.c: RMSNorm eps 1e-5, RoPE theta 10000, BOS 1, EOS 2). */
export function llama2cConfigJson(h: Llama2cHeader): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: h.dim,
    intermediate_size: h.hidden_dim,
    num_hidden_layers: h.n_layers,
    num_attention_heads: h.n_heads,
    num_key_value_heads: h.n_kv_heads,
    head_dim: h.dim / h.n_heads,
    vocab_size: h.vocab_size,
    max_position_embeddings: h.seq_len,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    hidden_act: "silu",
    tie_word_embeddings: h.shared_classifier,
    bos_token_id: 1,
    eos_token_id: 2,
    attention_bias: false,
    mlp_bias: false,
  };
}

export function llama2cFromBytes(bytes: Uint8Array, opts: LoadOptions & { file?: string } = {}): LlamaForCausalLM {
  const file = opts.file ?? "<bytes>";
  const backend = opts.backend ?? getDefaultBackend();
  const dtype = opts.dtype ?? "f32";
  const h = readLlama2cHeader(bytes, file);
  const { dim, hidden_dim: hidden, n_layers: L, n_heads, n_kv_heads, vocab_size: V, seq_len } = h;
  const hs = dim / n_heads;
  const kvDim = hs * n_kv_heads;

  // [name, per-layer shape, stacked over layers?] in file order.
  const layout: [string, number[], boolean][] = [
    ["token_embedding", [V, dim], false],
    ["rms_att", [dim], true],
    ["wq", [dim, dim], true],
    ["wk", [kvDim, dim], true],
    ["wv", [kvDim, dim], true],
    ["wo", [dim, dim], true],
    ["rms_ffn", [dim], true],
    ["w1", [hidden, dim], true],
    ["w2", [dim, hidden], true],
    ["w3", [hidden, dim], true],
    ["rms_final", [dim], false],
    ["freq_cis_real", [seq_len, hs / 2], false],
    ["freq_cis_imag", [seq_len, hs / 2], false],
  ];
  if (!h.shared_classifier) layout.push(["wcls", [V, dim], false]);
  const count = (shape: number[], stacked: boolean) => shape.reduce((a, b) => a * b, 1) * (stacked ? L : 1);
  const expected = 28 + 4 * layout.reduce((s, [, shape, stacked]) => s + count(shape, stacked), 0);
  if (bytes.byteLength < expected) {
    throw new Error(
      `${file}: truncated: ${bytes.byteLength} bytes, but the header (dim=${dim}, n_layers=${L}, vocab_size=${V}, seq_len=${seq_len}) needs ${expected}`,
    );
  }
  if (bytes.byteLength > expected) {
    throw new Error(`${file}: ${bytes.byteLength - expected} bytes beyond the ${expected} the header describes; not a llama2.c legacy checkpoint?`);
  }

  // One aligned f32 view of everything after the header.
  const body = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  const floats = new Float32Array(body.buffer, body.byteOffset + 28, (expected - 28) / 4);
  const arrays = new Map<string, Float32Array>();
  let at = 0;
  for (const [name, shape, stacked] of layout) {
    const n = count(shape, stacked);
    arrays.set(name, floats.subarray(at, at + n));
    at += n;
  }
  const layer = (name: string, i: number, size: number) => (arrays.get(name) as Float32Array).subarray(i * size, (i + 1) * size);

  const config = parseLlamaConfig(llama2cConfigJson(h), `${file} (llama2.c header)`);
  const model = new LlamaForCausalLM(config, { backend, dtype });
  try {
    scope(() => {
      const dict = new Map<string, Tensor>();
      const put = (name: string, data: Float32Array, shape: number[]) => dict.set(name, tensor(data, { shape, dtype, backend }));
      put("model.embed_tokens.weight", arrays.get("token_embedding") as Float32Array, [V, dim]);
      for (let i = 0; i < L; i++) {
        const p = `model.layers.${i}`;
        put(`${p}.input_layernorm.weight`, layer("rms_att", i, dim), [dim]);
        put(`${p}.self_attn.q_proj.weight`, permuteRotaryRows(layer("wq", i, dim * dim), n_heads, hs, dim), [dim, dim]);
        put(`${p}.self_attn.k_proj.weight`, permuteRotaryRows(layer("wk", i, kvDim * dim), n_kv_heads, hs, dim), [kvDim, dim]);
        put(`${p}.self_attn.v_proj.weight`, layer("wv", i, kvDim * dim), [kvDim, dim]);
        put(`${p}.self_attn.o_proj.weight`, layer("wo", i, dim * dim), [dim, dim]);
        put(`${p}.post_attention_layernorm.weight`, layer("rms_ffn", i, dim), [dim]);
        put(`${p}.mlp.gate_proj.weight`, layer("w1", i, hidden * dim), [hidden, dim]);
        put(`${p}.mlp.down_proj.weight`, layer("w2", i, dim * hidden), [dim, hidden]);
        put(`${p}.mlp.up_proj.weight`, layer("w3", i, hidden * dim), [hidden, dim]);
      }
      put("model.norm.weight", arrays.get("rms_final") as Float32Array, [dim]);
      // freq_cis_real/imag are skipped: the model computes its own rotate_half tables.
      if (!h.shared_classifier) put("lm_head.weight", arrays.get("wcls") as Float32Array, [V, dim]);
      model.loadStateDict(dict);
    });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}
