#!/usr/bin/env python3
"""Golden vectors for the Llama-family model tests (packages/nn/test/golden-families.test.ts).

An independent reference, in plain PyTorch and float64, written from the semantics of
transformers' modeling code (modeling_llama / modeling_mistral / modeling_qwen2 / modeling_qwen3,
modeling_rope_utils, masking_utils) -- not from Lowrank's TypeScript. For each family it builds a
small random checkpoint that has the family's features, and writes under
packages/nn/test/fixtures/golden/<name>/:

  config.json        an HF config (the keys the real family's config.json uses)
  model.safetensors  f32 weights with HF names; tied heads are left out, as transformers saves them
  golden.json        input ids, their logits (every position, f32), a greedy continuation

Run once, by hand (CI has no torch; the tests read the committed files):
  /usr/bin/python3 scripts/golden/reference.py            # python3-torch (scripts/install-peer.sh)

The weights are drawn with a fixed seed, so re-running rewrites identical files.
"""
import json
import math
import os
import struct
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "packages", "nn", "test", "fixtures", "golden")
F64 = torch.float64


# ---------------------------------------------------------------- the families, as configs

def base(**kw):
    c = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
             hidden_act="silu", bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
    c.update(kw)
    return c


FAMILIES = {
    # Llama 3.x: GQA, head_dim 16 != hidden/heads (8), llama3 RoPE with the three frequency bands
    # in play (wavelengths 6.3 < 16 kept, 32 blended, >= 167 > 64 divided), several eos ids.
    "llama3": base(model_type="llama", architectures=["LlamaForCausalLM"], head_dim=16, rope_theta=500000.0,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=64),
                   attention_bias=False, mlp_bias=False, eos_token_id=[62, 63]),
    # Llama 1/2 style (TinyLlama): multi-head, linear RoPE scaling, attention_bias and mlp_bias on.
    "llama-linear": base(model_type="llama", architectures=["LlamaForCausalLM"], num_key_value_heads=4,
                         rope_scaling=dict(type="linear", factor=4.0), attention_bias=True, mlp_bias=True),
    # Dynamic NTK: max_position_embeddings 16 and a 24-token input, so the base is raised.
    "llama-dynamic": base(model_type="llama", architectures=["LlamaForCausalLM"], num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, max_position_embeddings=16,
                          rope_scaling=dict(rope_type="dynamic", factor=2.0)),
    # SmolLM2: a Llama with a tied head (no lm_head.weight in the file), 3 heads over 1 kv head.
    "smollm2": base(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=24, num_attention_heads=3,
                    num_key_value_heads=1, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=0,
                    eos_token_id=0, attention_bias=False, rope_scaling=None),
    # Mistral: every layer slides; a window of 8 under 20-token inputs and a 10-token prompt.
    "mistral": base(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=8,
                    max_position_embeddings=64),
    # Qwen2/2.5: q/k/v biases (no o_proj bias), tied head, and use_sliding_window with
    # max_window_layers 1: layer 0 full, layer 1 a window of 6.
    "qwen2": base(model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, use_sliding_window=True, sliding_window=6, max_window_layers=1),
    # Qwen3: q_norm/k_norm per head before RoPE, head_dim 16 from the config, no biases, tied head.
    "qwen3": base(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=16, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, attention_bias=False, tie_word_embeddings=True, use_sliding_window=False,
                  sliding_window=None, max_window_layers=2, rope_scaling=None),
}

# Per family: input length for the logits, prompt length and new tokens for the greedy run.
LENGTHS = {"llama-dynamic": (24, 6, 10)}
DEFAULT_LENGTHS = (20, 10, 10)


# ---------------------------------------------------------------- derived settings

def head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def layer_windows(c):
    """Per layer: the sliding window or None, as the transformers configs derive layer_types."""
    n = c["num_hidden_layers"]
    t = c["model_type"]
    if t == "mistral":
        w = c.get("sliding_window", 4096)
        return [w] * n
    if t in ("qwen2", "qwen3"):
        w = c.get("sliding_window") if c.get("use_sliding_window") else None
        return [w if (w is not None and i >= c.get("max_window_layers", 28)) else None for i in range(n)]
    return [None] * n


def rope_scaling(c):
    s = c.get("rope_scaling")
    if not s:
        return None
    s = dict(s)
    s["rope_type"] = s.get("rope_type", s.get("type"))
    return s


def qkv_bias(c):
    return c["model_type"] == "qwen2" or (c["model_type"] in ("llama", "qwen3") and c.get("attention_bias", False))


def o_bias(c):
    return c["model_type"] in ("llama", "qwen3") and c.get("attention_bias", False)


def mlp_bias(c):
    return c["model_type"] == "llama" and c.get("mlp_bias", False)


# ---------------------------------------------------------------- RoPE (modeling_rope_utils)

def inv_freq(c, seq_len):
    dim = head_dim(c)
    base_ = c["rope_theta"]
    s = rope_scaling(c)
    if s and s["rope_type"] == "dynamic":
        # _compute_dynamic_ntk_parameters, with dynamic_rope_update's seq_len = max(position_ids) + 1
        max_pos = c["max_position_embeddings"]
        seq_len = max(seq_len, max_pos)
        base_ = base_ * ((s["factor"] * seq_len / max_pos) - (s["factor"] - 1)) ** (dim / (dim - 2))
    inv = 1.0 / (base_ ** (torch.arange(0, dim, 2, dtype=F64) / dim))
    if not s or s["rope_type"] == "dynamic":
        return inv
    if s["rope_type"] == "linear":
        return inv / s["factor"]
    assert s["rope_type"] == "llama3"
    factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
    medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
    return torch.where(medium, smoothed, inv_l)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, cos, sin):  # x (B, n, T, hs); cos, sin (T, hs)
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------- the forward pass

def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, W, name):
    y = x @ W[name + ".weight"].T
    b = W.get(name + ".bias")
    return y if b is None else y + b


def forward(c, W, ids):
    """ids: list of ints -> logits (T, V), float64; no cache: every position recomputed."""
    T = len(ids)
    hs, nh, nkv = head_dim(c), c["num_attention_heads"], c["num_key_value_heads"]
    eps = c["rms_norm_eps"]
    pos = torch.arange(T, dtype=F64)
    freqs = torch.outer(pos, inv_freq(c, T))
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    windows = layer_windows(c)
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]  # (T, C)
    q_idx = torch.arange(T)[:, None]
    kv_idx = torch.arange(T)[None, :]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = linear(h, W, p + "self_attn.q_proj").view(T, nh, hs)
        k = linear(h, W, p + "self_attn.k_proj").view(T, nkv, hs)
        v = linear(h, W, p + "self_attn.v_proj").view(T, nkv, hs)
        if c["model_type"] == "qwen3":  # Qwen3Attention: norm on head_dim, then transpose, then RoPE
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (n, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.repeat_interleave(nh // nkv, dim=0)  # repeat_kv
        v = v.repeat_interleave(nh // nkv, dim=0)
        allowed = kv_idx <= q_idx
        if windows[i] is not None:  # masking_utils.sliding_window_overlay
            allowed = allowed & (kv_idx > q_idx - windows[i])
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        scores = scores.masked_fill(~allowed, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v  # (nh, T, hs)
        x = x + linear(y.transpose(0, 1).reshape(T, nh * hs), W, p + "self_attn.o_proj")
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = linear(h, W, p + "mlp.gate_proj")
        x = x + linear(torch.nn.functional.silu(g) * linear(h, W, p + "mlp.up_proj"), W, p + "mlp.down_proj")
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------- checkpoint

def build_weights(c, gen):
    """HF names -> f32 tensors (random; norms near 1, small biases)."""
    C, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hs, nh, nkv = head_dim(c), c["num_attention_heads"], c["num_key_value_heads"]
    W = {}

    def rnd(shape, std):
        return (torch.randn(*shape, generator=gen, dtype=torch.float32) * std)

    def lin(name, out_f, in_f, bias):
        W[name + ".weight"] = rnd((out_f, in_f), 1.0 / math.sqrt(in_f))
        if bias:
            W[name + ".bias"] = rnd((out_f,), 0.1)

    def norm(name, n):
        W[name + ".weight"] = 1.0 + rnd((n,), 0.1)

    W["model.embed_tokens.weight"] = rnd((V, C), 1.0)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm", C)
        lin(p + "self_attn.q_proj", nh * hs, C, qkv_bias(c))
        lin(p + "self_attn.k_proj", nkv * hs, C, qkv_bias(c))
        lin(p + "self_attn.v_proj", nkv * hs, C, qkv_bias(c))
        lin(p + "self_attn.o_proj", C, nh * hs, o_bias(c))
        if c["model_type"] == "qwen3":
            norm(p + "self_attn.q_norm", hs)
            norm(p + "self_attn.k_norm", hs)
        norm(p + "post_attention_layernorm", C)
        lin(p + "mlp.gate_proj", I, C, mlp_bias(c))
        lin(p + "mlp.up_proj", I, C, mlp_bias(c))
        lin(p + "mlp.down_proj", C, I, mlp_bias(c))
    norm("model.norm", C)
    if not c["tie_word_embeddings"]:
        lin("lm_head", V, C, False)
        W["lm_head.weight"] *= 2.0  # logits of a useful spread
    return W


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        data = tensors[name].contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- golden vectors

def greedy(c, W, prompt, steps):
    """Greedy ids without a cache (the whole sequence each step); also the smallest top-1 margin."""
    ids, margin = list(prompt), math.inf
    for _ in range(steps):
        last = forward(c, W, ids)[-1]
        top = torch.topk(last, 2).values
        margin = min(margin, float(top[0] - top[1]))
        ids.append(int(last.argmax()))
    return ids[len(prompt):], margin


def f32(x):
    return float(torch.tensor(x, dtype=torch.float32))


def main():
    only = set(sys.argv[1:])
    for seed, (name, cfg) in enumerate(FAMILIES.items()):
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(1000 + seed)
        T, P, N = LENGTHS.get(name, DEFAULT_LENGTHS)
        W32 = build_weights(cfg, gen)
        W = {k: v.to(F64) for k, v in W32.items()}
        ids = torch.randint(3, cfg["vocab_size"], (T,), generator=gen).tolist()
        logits = forward(cfg, W, ids)
        new_ids, margin = greedy(cfg, W, ids[:P], N)
        # Ties would make the test flaky rather than right or wrong: the seed must give clear winners.
        assert margin > 1e-3, f"{name}: greedy top-1 margin {margin} too small; change the seed"
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        write_safetensors(os.path.join(d, "model.safetensors"), W32)
        golden = {
            "reference": "scripts/golden/reference.py (plain PyTorch, float64)",
            "torch": torch.__version__,
            "input_ids": ids,
            "logits_shape": [T, cfg["vocab_size"]],
            "logits": [f32(v) for v in logits.flatten().tolist()],
            "greedy": {"prompt_ids": ids[:P], "new_tokens": N, "generated_ids": new_ids, "min_top1_margin": margin},
        }
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(golden, f, separators=(",", ":"))
            f.write("\n")
        size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
        print(f"{name}: {len(W32)} tensors, {size / 1024:.0f} KiB, logits max |x| {logits.abs().max():.2f}, "
              f"greedy margin {margin:.3g}, windows {layer_windows(cfg)}")


if __name__ == "__main__":
    main()
