#!/usr/bin/env python3
"""PyTorch anchors for bench/cuda.bench.ts (GPU machine only; the product
never uses PyTorch): bf16 torch.matmul on the shapes the CUDA issue names, and
the dense matmuls with the same FLOPs as the Mixtral- and DeepSeek-shaped
expert layers. Times with CUDA events: warm-up, then the median of several
batches of back-to-back calls, as the sparsekit side is timed.

Writes {case: {"ms": median ms per call, "tflops": ...}} as JSON.
Usage: python3 bench/torch_ref.py out.json [--quick]
"""
import json
import statistics
import sys

import torch


def bench(fn, flops, reps=7, min_ms=20.0):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    # Calls per batch so that a batch takes at least min_ms.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    n = max(1, int(min_ms / one))
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / n)
    ms = statistics.median(times)
    return {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "calls_per_batch": n}


def main():
    out_path = sys.argv[1]
    quick = "--quick" in sys.argv
    reps = 5 if quick else 9
    torch.manual_seed(0)
    dev = "cuda"
    bf = torch.bfloat16
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    def mm_case(name, m, k, n):
        x = torch.randn(m, k, device=dev, dtype=bf)
        w = torch.randn(n, k, device=dev, dtype=bf)  # nn.Linear layout, y = x @ w.T
        res[name] = bench(lambda: torch.matmul(x, w.t()), 2.0 * m * k * n, reps)
        del x, w

    mm_case("linear 4096x4096x4096", 4096, 4096, 4096)
    mm_case("linear 16x4096x14336", 16, 4096, 14336)

    # Equal-FLOP dense anchors of an expert layer: all T·k routed rows through
    # one gate+up [2·ffn, d] and one down [d, ffn] matmul.
    def experts_case(name, tokens, k, d, ffn):
        rows = tokens * k
        x = torch.randn(rows, d, device=dev, dtype=bf)
        w13 = torch.randn(2 * ffn, d, device=dev, dtype=bf)
        w2 = torch.randn(d, ffn, device=dev, dtype=bf)
        h = torch.randn(rows, ffn, device=dev, dtype=bf)

        def run():
            torch.matmul(x, w13.t())
            torch.matmul(h, w2.t())

        res[name] = bench(run, 2.0 * rows * d * ffn * 3, reps)
        del x, w13, w2, h

    experts_case("experts mixtral T=4096", 4096, 2, 4096, 14336)
    experts_case("experts deepseek T=4096", 4096, 8, 7168, 2048)
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"torch {k}: {v['ms']:.4f} ms, {v['tflops']:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
