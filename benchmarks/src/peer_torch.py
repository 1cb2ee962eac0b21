#!/usr/bin/python3
"""PyTorch CPU peer for `lowrank bench peer` (benchmarks/src/peer.ts): one Llama-shaped training step,
timed, with the same shape, LoRA config, batch, sequence length and optimizer as the Lowrank side.

Run with Debian's interpreter and OpenBLAS (scripts/install-peer.sh):
  OPENBLAS_NUM_THREADS=2 /usr/bin/python3 benchmarks/src/peer_torch.py --method lora --dim 256 ...
Prints one JSON object on stdout.

What it mirrors (packages/nn, packages/lora, packages/trainer):
- decoder: RMSNorm (eps), rotate_half RoPE, grouped-query attention with a causal mask, SwiGLU MLP,
  tied or untied head; weights N(0, 0.02) (random: the ratio is about speed).
- LoRA (PEFT semantics): y = base(x) + B(A(dropout(x))) * alpha/r, A kaiming-uniform, B = 0.
- QLoRA: the base Linear weights stored as NF4 codes (blocksize 64) and dequantized in every
  forward (bitsandbytes' CPU path does the same), LoRA on top, activations recomputed per layer (torch's checkpoint)
  (Lowrank's qlora default). Double quantization of the absmax is not modelled (it touches 1/64
  of the elements).
- AdamW (betas 0.9/0.999, eps 1e-8, no decay), global-norm clipping at 1.0, loss = mean token
  cross-entropy; batches are fixed synthetic token ids cycled.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


class NF4Linear(nn.Module):
    """A frozen weight kept as packed 4-bit NF4 codes + f32 absmax per block of 64."""

    def __init__(self, weight, blocksize=64):
        super().__init__()
        self.shape = weight.shape
        flat = weight.detach().reshape(-1, blocksize)
        absmax = flat.abs().amax(dim=1).clamp_min(1e-12)
        idx = (flat / absmax[:, None]).unsqueeze(-1).sub(NF4).abs().argmin(-1).to(torch.uint8).reshape(-1)
        self.register_buffer("packed", (idx[0::2] << 4) | idx[1::2])
        self.register_buffer("absmax", absmax)
        self.register_buffer("code", NF4.clone())
        self.blocksize = blocksize

    def forward(self, x):
        codes = torch.stack([self.packed >> 4, self.packed & 15], dim=1).reshape(-1).long()
        w = (self.code[codes].reshape(-1, self.blocksize) * self.absmax[:, None]).reshape(self.shape)
        return F.linear(x, w)


class LoraLinear(nn.Module):
    def __init__(self, base, in_f, out_f, r, alpha, dropout):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(in_f, r, bias=False)
        self.lora_B = nn.Linear(r, out_f, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(self.drop(x))) * self.scaling


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Layer(nn.Module):
    def __init__(self, a):
        super().__init__()
        C, hs = a.dim, a.dim // a.heads
        self.nh, self.nkv, self.hs = a.heads, a.kv_heads, hs
        self.input_layernorm = RMSNorm(C, a.eps)
        self.post_attention_layernorm = RMSNorm(C, a.eps)
        self.q_proj = nn.Linear(C, a.heads * hs, bias=False)
        self.k_proj = nn.Linear(C, a.kv_heads * hs, bias=False)
        self.v_proj = nn.Linear(C, a.kv_heads * hs, bias=False)
        self.o_proj = nn.Linear(a.heads * hs, C, bias=False)
        self.gate_proj = nn.Linear(C, a.hidden, bias=False)
        self.up_proj = nn.Linear(C, a.hidden, bias=False)
        self.down_proj = nn.Linear(a.hidden, C, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.nh, self.hs).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.nkv, self.hs).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.nkv, self.hs).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.hs)
        att = F.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.o_proj(y)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed = nn.Embedding(a.vocab, a.dim)
        self.layers = nn.ModuleList([Layer(a) for _ in range(a.layers)])
        self.norm = RMSNorm(a.dim, a.eps)
        self.head = nn.Linear(a.dim, a.vocab, bias=False)
        if a.tied:
            self.head.weight = self.embed.weight
        hs = a.dim // a.heads
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, hs, 2).float() / hs))
        ang = torch.outer(torch.arange(a.seq).float(), inv)
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1))
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1))
        self.register_buffer("mask", torch.triu(torch.ones(a.seq, a.seq, dtype=torch.bool), 1))
        self.recompute = False

    def forward(self, ids):
        T = ids.shape[1]
        x = self.embed(ids)
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        for layer in self.layers:
            if self.recompute:
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask)
        return self.head(self.norm(x))


LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare(model, a):
    if a.method == "full":
        return [p for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    targets = LINEAR if a.targets == "all-linear" else a.targets.split(",")
    for layer in model.layers:
        for name in LINEAR:
            lin = getattr(layer, name)
            base = NF4Linear(lin.weight) if a.method == "qlora" else lin
            if name in targets:
                base = LoraLinear(base, lin.in_features, lin.out_features, a.rank, a.alpha, a.dropout)
            setattr(layer, name, base)
    model.recompute = a.method == "qlora" if a.recompute is None else a.recompute == "on"
    return [p for p in model.parameters() if p.requires_grad]


def main():
    ap = argparse.ArgumentParser()
    for k, d in [("dim", 256), ("layers", 4), ("heads", 4), ("kv_heads", 0), ("hidden", 688), ("vocab", 512),
                 ("batch", 8), ("seq", 128), ("rank", 8), ("steps", 10), ("warmup", 3), ("threads", 1), ("seed", 0)]:
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=d)
    for k, d in [("alpha", 16.0), ("dropout", 0.05), ("lr", 1e-3), ("eps", 1e-5), ("rope_theta", 10000.0), ("clip", 1.0)]:
        ap.add_argument("--" + k.replace("_", "-"), type=float, default=d)
    ap.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--recompute", choices=["on", "off"], default=None)
    a = ap.parse_args()
    a.kv_heads = a.kv_heads or a.heads
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = Llama(a)
    for n, p in model.named_parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    params_all = sum(p.numel() for p in model.parameters())
    trainable = prepare(model, a)
    n_train = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    batches = [torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g) for _ in range(4)]
    model.train()
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        b = batches[step % len(batches)]
        t0 = time.perf_counter()
        logits = model(b[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), b[:, 1:].reshape(-1))
        loss.backward()
        if a.clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)
    step_s = statistics.median(times)
    # Which BLAS actually got loaded (Debian switches libblas.so.3 by update-alternatives).
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({l.split()[-1] for l in f if "blas" in l.lower() and l.split()[-1].startswith("/")})
    except OSError:
        libs = []
    print(json.dumps({
        "torch_version": torch.__version__, "python": sys.version.split()[0], "executable": sys.executable,
        "torch_threads": torch.get_num_threads(), "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "blas_libraries": libs,
        "method": a.method, "params": params_all, "trainable_params": n_train, "tokens_per_step": a.batch * a.seq,
        "step_s_median": step_s, "step_s_all": times, "tokens_per_s": a.batch * a.seq / step_s, "losses": losses,
        "recompute": model.recompute,
    }))


if __name__ == "__main__":
    main()
