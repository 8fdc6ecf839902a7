"""Seeded init that is bit-identical whatever the thread count.

A decomposition split across threads sums in another order: torch's
``orthogonal_`` (a QR through LAPACK) on a 512×512 matrix gave other bits on 1
thread than on 2 with one seed. Element-wise draws (``normal_``, ``uniform_``,
``trunc_normal_``) do not depend on it. So every init runs under
:func:`single_threaded` (specs, callables, a module's own ``reset``, a
factory's constructor replay), and :func:`orthogonal_` does its QR in
float64 before it rounds to the tensor's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn import init as nn_init

__all__ = ["orthogonal_", "single_threaded"]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block on one intra-op thread (torch's, which also sets MKL's), then restore the count.

    Example:
        >>> n = torch.get_num_threads()
        >>> with single_threaded():
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == n
        True
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def orthogonal_(tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`torch.nn.init.orthogonal_`, computed in float64 on one thread and rounded into ``tensor``.

    Example:
        >>> a, b = torch.empty(6, 4), torch.empty(6, 4)
        >>> _ = orthogonal_(a, generator=torch.Generator().manual_seed(0))
        >>> _ = orthogonal_(b, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(a, b), torch.allclose(a.T @ a, torch.eye(4), atol=1e-6)
        (True, True)
    """
    exact = torch.empty(tensor.shape, dtype=torch.float64)
    with single_threaded():
        nn_init.orthogonal_(exact, gain, generator=generator)
    with torch.no_grad():
        return tensor.copy_(exact)
