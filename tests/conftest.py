"""Shared test settings.

One intra-op thread: the suite's tensors are tiny, and on a loaded 2-core machine two threads made them
10-50x slower (thread hand-off dominates). Tests that measure threading set it themselves.
"""
import torch

torch.set_num_threads(1)
