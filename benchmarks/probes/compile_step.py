"""torch.compile vs eager for one cheapmix-m TrainStep (16 uint8 128x128 inputs, bce-dice, Adam, augment light,
channels_last, 1 thread): warm-up time and the median of 8 steps, eager and compiled twice each, interleaved.

    python benchmarks/probes/compile_step.py
"""

import time

import torch

from defectseg.data.transforms import Augmenter
from defectseg.losses import build_loss
from defectseg.models import PixelModel, create_model
from defectseg.step import TrainStep

torch.set_num_threads(1)
x = torch.randint(0, 256, (16, 1, 128, 128), dtype=torch.uint8)
y = (torch.rand(16, 128, 128) > 0.99).long()


def run(compiled):
    torch.manual_seed(0)
    m = PixelModel(create_model("cheapmix-m")).to(memory_format=torch.channels_last)
    fwd = torch.compile(m) if compiled else m
    st = TrainStep(
        fwd,
        build_loss("bce-dice"),
        torch.optim.Adam(m.parameters(), 1e-3),
        Augmenter("light", seed=0),
        channels_last=True,
    )
    t = time.perf_counter()
    for _ in range(3):
        st(x, y)
    warm = time.perf_counter() - t
    ts = []
    for _ in range(8):
        t = time.perf_counter()
        st(x, y)
        ts.append(time.perf_counter() - t)
    ts.sort()
    return warm, ts[len(ts) // 2]


for c in (False, True, False, True):
    w, d = run(c)
    print("compiled" if c else "eager", f"warmup {w:.1f}s median {d * 1000:.0f} ms", flush=True)
