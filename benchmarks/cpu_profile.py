"""Where CheapNet's CPU time goes: torch.profiler's per-operator self CPU time for one 1x1x512x512 forward.

Run: .venv/bin/python benchmarks/cpu_profile.py [--threads 1] [--models cheapnet-s,cheapnet-m] [--channels-last]
Prints the top operators per model (self CPU time summed over 5 profiled forwards after 3 warm-up ones).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from defectseg.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="cheapnet-s,cheapnet-m")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        model = create_model(name).eval()
        x = torch.randn(1, 1, args.size, args.size)
        if args.channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    model(x)
        print(
            f"== {name} 1x1x{args.size}x{args.size}, threads {args.threads}, "
            f"{'channels_last' if args.channels_last else 'contiguous'}: 5 forwards"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


if __name__ == "__main__":
    main()
