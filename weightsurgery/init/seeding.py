"""Per-key seeds that do not depend on global RNG state or on which other keys load.

A base seed and a name (a target key, or a module path) hash to a seed with
BLAKE2b, which is stable across processes and Python versions, unlike
:func:`hash`.
"""

from __future__ import annotations

import hashlib

import torch

from weightsurgery.errors import InitSpecError

__all__ = ["base_seed", "derive_seed", "generator_for"]

_SEED_BITS = 63


def base_seed(seed: int | None) -> int:
    """The seed every per-key seed derives from.

    Args:
        seed: the user's seed, or ``None`` to draw one from torch's global RNG
            (so a preceding ``torch.manual_seed`` still makes the result reproducible).

    Returns:
        ``seed`` itself, or the drawn seed.

    Raises:
        InitSpecError: ``seed`` is neither an int nor ``None``.

    Example:
        >>> base_seed(7)
        7
        >>> _ = torch.manual_seed(0); a = base_seed(None)
        >>> _ = torch.manual_seed(0); a == base_seed(None)
        True
    """
    if seed is None:
        return int(torch.randint(0, 2**_SEED_BITS - 1, (1,)).item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InitSpecError(f"seed={seed!r} must be an int or None; pass e.g. seed=0")
    return seed


def derive_seed(base: int, name: str) -> int:
    """A 63-bit seed for ``name``, stable across runs and processes.

    Example:
        >>> derive_seed(0, "head.weight") == derive_seed(0, "head.weight")
        True
        >>> derive_seed(0, "head.weight") == derive_seed(1, "head.weight")
        False
    """
    digest = hashlib.blake2b(f"{base}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def generator_for(base: int, name: str) -> torch.Generator:
    """A fresh CPU generator seeded with :func:`derive_seed`.

    Example:
        >>> a = torch.rand(2, generator=generator_for(0, "x"))
        >>> torch.equal(a, torch.rand(2, generator=generator_for(0, "x")))
        True
    """
    return torch.Generator().manual_seed(derive_seed(base, name))
