"""Shared test settings.

One intra-op thread for the whole suite: its tensors are tiny, and on a loaded 2-core machine OpenMP's
spin-waits made two threads 10-50x slower (test_models.py: 160 s with 2 threads under load, 15 s with 1).
Tests that measure threading set it themselves.
"""

import torch

torch.set_num_threads(1)
