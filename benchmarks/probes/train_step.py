"""Time step.TrainStep (bce-dice, Adam, augment light) on 16 uint8 128x128 inputs: 3 warm-up steps, then the
mean of 10 steps. Add any 4th argument for a torch profiler table of 3 more steps.

    python benchmarks/probes/train_step.py cheapmix-m 2 cl [prof]      # threads, cl = channels_last | nchw
"""

import sys
import time

import torch

from defectseg.data.transforms import Augmenter
from defectseg.losses import build_loss
from defectseg.models import PixelModel, create_model
from defectseg.step import TrainStep

torch.set_num_threads(int(sys.argv[2]))
name = sys.argv[1]
cl = sys.argv[3] == "cl"
m = PixelModel(create_model(name))
if cl:
    m = m.to(memory_format=torch.channels_last)
x = torch.randint(0, 256, (16, 1, 128, 128), dtype=torch.uint8)
y = (torch.rand(16, 128, 128) > 0.99).long()
st = TrainStep(
    m, build_loss("bce-dice"), torch.optim.Adam(m.parameters(), 1e-3), Augmenter("light", seed=0), channels_last=cl
)
for _ in range(3):
    st(x, y)
t = time.perf_counter()
n = 10
for _ in range(n):
    st(x, y)
dt = (time.perf_counter() - t) / n
print(f"{name} threads {sys.argv[2]} {'channels_last' if cl else 'nchw'}: {dt * 1000:.0f} ms/step, {16 / dt:.1f} img/s")
if len(sys.argv) > 4:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(3):
            st(x, y)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
