"""The two CPU ceilings (memory bandwidth, matmul rate) and CheapNet's bytes and MACs per 512x512 image.

Run: .venv/bin/python benchmarks/cpu_ceilings.py [--threads N]. Prints the medians of repeated runs. The floors it
prints are lower bounds: time >= max(bytes / bandwidth, MACs / MAC rate), where the MAC rate is half the measured
matmul FLOP rate (depthwise convs reach far less than a matmul does, so the arithmetic floor is optimistic).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from defectseg.bench import count_macs
from defectseg.models import create_model


def median_seconds(fn, repeats: int = 15, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(n_bytes: int = 512 * 2**20) -> float:
    """GB/s of a large numpy copy, counting bytes read plus bytes written (single-threaded: numpy copies on one
    core)."""
    src = np.random.default_rng(0).random(n_bytes // 8)
    dst = np.empty_like(src)
    return 2 * n_bytes / median_seconds(lambda: np.copyto(dst, src)) / 1e9


def torch_copy_bandwidth(n_bytes: int = 512 * 2**20) -> float:
    """GB/s of a large torch copy_ (uses torch's intra-op threads), read plus write."""
    src = torch.rand(n_bytes // 4)
    dst = torch.empty_like(src)
    return 2 * n_bytes / median_seconds(lambda: dst.copy_(src)) / 1e9


def matmul_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats=10) / 1e9


def activation_bytes(name: str, size: int = 512) -> tuple[int, int]:
    """(minimum, eager) bytes moved per image in float32.

    minimum: every block output (conv+BN+LeakyReLU fused) written once and read once by each consumer, plus the
    input read and the logits written; the concats are free (a fused kernel reads the two halves in place).
    eager: every leaf module's output written once and read once (conv, BN and the in-place LeakyReLU each make a
    pass), plus the four torch.cat copies (written and read).
    """
    model = create_model(name).eval()
    leaf_out: list[int] = []
    block_out: dict[str, int] = {}

    def leaf_hook(module, args, out):
        leaf_out.append(out.numel())

    handles = [m.register_forward_hook(leaf_hook) for m in model.modules() if len(list(m.children())) == 0]
    for block in (
        "encoder1",
        "encoder2",
        "encoder3",
        "encoder4",
        "bottleneck",
        "decoder1",
        "decoder2",
        "decoder3",
        "decoder4",
        "output",
    ):
        handles.append(
            getattr(model, block).register_forward_hook(
                lambda m, a, o, block=block: block_out.__setitem__(block, o.numel())
            )
        )
    with torch.no_grad():
        model(torch.randn(1, 1, size, size))
    for h in handles:
        h.remove()
    # Consumers of each block output: e1 feeds encoder2 and the output concat; e2..e4 feed the next encoder and a
    # decoder concat; the bottleneck and d1..d4 feed one decoder/output each.
    readers = {
        "encoder1": 2,
        "encoder2": 2,
        "encoder3": 2,
        "encoder4": 2,
        "bottleneck": 1,
        "decoder1": 1,
        "decoder2": 1,
        "decoder3": 1,
        "decoder4": 1,
        "output": 0,
    }
    elems_min = size * size + sum(n * (1 + readers[b]) for b, n in block_out.items())
    cat = 2 * sum(block_out[b] for b in ("encoder1", "encoder2", "encoder3", "encoder4"))  # the 4 concat outputs
    elems_eager = size * size + 2 * sum(leaf_out) + 2 * cat
    return 4 * elems_min, 4 * elems_eager


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bw_np, bw_torch, gflops = copy_bandwidth(), torch_copy_bandwidth(), matmul_gflops()
    print(f"numpy copy 512 MiB (1 thread): {bw_np:.1f} GB/s (read + write)")
    print(f"torch copy_ 512 MiB ({torch.get_num_threads()} threads): {bw_torch:.1f} GB/s (read + write)")
    print(f"torch.mm 2048x2048 fp32: {gflops:.1f} GFLOP/s = {gflops / 2:.1f} GMAC/s")
    bw = max(bw_np, bw_torch)
    for name in ("cheapnet-s", "cheapnet-m", "cheapnet-l"):
        macs = count_macs(create_model(name), (1, 1, 512, 512))
        lo, eager = activation_bytes(name)
        print(
            f"{name}: {macs / 1e6:.1f} MMACs/img, bytes/img minimum {lo / 2**20:.0f} MiB, eager {eager / 2**20:.0f}"
            f" MiB; floors: bytes(min) {lo / bw / 1e6:.2f} ms, bytes(eager) {eager / bw / 1e6:.2f} ms, "
            f"MACs {macs / (gflops / 2) / 1e6:.2f} ms"
        )


if __name__ == "__main__":
    main()
