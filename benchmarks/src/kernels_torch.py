#!/usr/bin/python3
"""PyTorch CPU side of `lowrank bench kernels` (benchmarks/src/kernels.ts): f32 matmul GFLOP/s on the
same shapes and operand layouts (x·Wᵀ reads a transposed view, as Lowrank's Linear does), timed the
same way: median of samples, each a batch of calls sized to about --target-ms.

  OPENBLAS_NUM_THREADS=2 /usr/bin/python3 benchmarks/src/kernels_torch.py --threads 1 --target-ms 60 \
      --samples 3 '[{"name": "square 1024³", "M": 1024, "K": 1024, "N": 1024}]'
Prints one JSON object on stdout.
"""
import argparse
import json
import statistics
import time

import torch


def time_call(fn, target_ms, samples):
    fn()
    t0 = time.perf_counter()
    fn()
    once = (time.perf_counter() - t0) * 1000
    reps = max(1, min(200, round(target_ms / max(once, 0.01))))
    per = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        per.append((time.perf_counter() - t) * 1000 / reps)
    return statistics.median(per)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cases", help="JSON list of {name, M, K, N, transposeA?, transposeB?}")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (intra-op; BLAS threads come from OPENBLAS_NUM_THREADS)")
    p.add_argument("--target-ms", type=float, default=60)
    p.add_argument("--samples", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    results = {}
    for c in json.loads(a.cases):
        M, K, N = c["M"], c["K"], c["N"]
        x = torch.rand(K, M, generator=g).T if c.get("transposeA") else torch.rand(M, K, generator=g)
        w = torch.rand(N, K, generator=g).T if c.get("transposeB") else torch.rand(K, N, generator=g)
        ms = time_call(lambda: x @ w, a.target_ms, a.samples)
        results[c["name"]] = {"ms": ms, "gflops": 2 * M * N * K / ms / 1e6}
    print(json.dumps({"torch_version": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
