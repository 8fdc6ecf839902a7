"""Peak CUDA memory of a step, for the GPU-only tests (one process, and one rank under torchrun)."""

from __future__ import annotations

from collections.abc import Callable

import torch

SLACK = 1 << 20
"""The caching allocator rounds each block up (512 B); nothing else may be allocated."""


def peak_during(run: Callable[[], object]) -> int:
    """Device bytes allocated at the peak of ``run()`` above those allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        run()
    finally:
        torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
