"""Batch-1 latency of a fitted or trained checkpoint on the default backend, as predict and serve load it.

    python benchmarks/probes/net_latency.py RUN/best.pt SIZE THREADS [BACKEND]
`defectseg benchmark` builds models with their default options, which for patchcore-lite0 means an empty memory
bank; this times the checkpoint itself (its bank included): `backends.load_net` (backend auto: the exported graph on
ONNX Runtime), a (1, C, SIZE, SIZE) uint8 input, 5 warm-up calls, then the median and p90 of 50.
"""

import sys
import time

import numpy as np

from defectseg.backends import load_net

path, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
backend = sys.argv[4] if len(sys.argv) > 4 else "auto"
net = load_net(path, device="cpu", backend=backend, threads=threads)
x = np.random.default_rng(0).integers(0, 256, (1, net.input_channels, size, size), dtype=np.uint8)
for _ in range(5):
    net.logits(x)
times = []
for _ in range(50):
    t0 = time.perf_counter()
    net.logits(x)
    times.append(1000 * (time.perf_counter() - t0))
print(
    f"{path}: backend {net.backend} ({net.note or 'asked for'}), {size}x{size}, {threads} threads: median "
    f"{np.median(times):.1f} ms, p90 {np.percentile(times, 90):.1f} ms"
)
