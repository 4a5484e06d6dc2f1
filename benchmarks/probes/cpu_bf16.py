"""Does bf16 autocast pay for a CPU training step here? Median time of a cheapmix-m step (channels_last, batch 16,
128², BCE+Dice, Adam; one thread; 6 steps, the first 2 dropped) in float32 and under bf16 autocast. Run it as is,
and with oneDNN capped to see a CPU without native bf16 (docs/results.md, training speed):

    python benchmarks/probes/cpu_bf16.py
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/probes/cpu_bf16.py
"""

import time

import torch

from defectseg.losses import build_loss
from defectseg.models import PixelModel, create_model

torch.set_num_threads(1)
for dtype in (None, torch.bfloat16):
    torch.manual_seed(0)
    model = PixelModel(create_model("cheapmix-m")).train().to(memory_format=torch.channels_last)
    opt, loss_fn = torch.optim.Adam(model.parameters(), 1e-3), build_loss("bce-dice")
    x = (torch.rand(16, 1, 128, 128) * 255).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(16, 128, 128) > 0.97).long()
    times = []
    for _ in range(6):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x).float()
        loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    median = sorted(times[2:])[2]  # of 4: the upper middle
    print(f"cheapmix-m {dtype or 'float32'}: median {median * 1000:.0f} ms, {16 / median:.1f} img/s", flush=True)
