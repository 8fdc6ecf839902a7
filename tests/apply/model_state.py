"""A model's complete state, to prove that a failed transfer left it bit-for-bit as it was."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Slot:
    """One parameter or buffer slot of one module, as it was."""

    obj: object  # the tensor object itself: a replaced parameter is not the same object
    requires_grad: bool
    dtype: torch.dtype
    shape: tuple[int, ...]
    device: str
    data: bytes | None  # None on meta (no data)


def snapshot(model: nn.Module) -> dict[tuple[str, str, str], Slot]:
    """Every slot of every module (shared modules under each of their paths), with its bytes."""
    out = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
            for name, t in table.items():
                if t is None:
                    continue
                data = None
                if not t.is_meta:
                    dense = t.detach().cpu()
                    dense = dense.to_dense() if dense.layout is not torch.strided else dense
                    data = dense.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                out[(path, kind, name)] = Slot(t, t.requires_grad, t.dtype, tuple(t.shape), str(t.device), data)
    return out


def assert_unchanged(before: dict[tuple[str, str, str], Slot], model: nn.Module) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for slot, old in before.items():
        new = after[slot]
        assert new.obj is old.obj, f"{slot}: the tensor object was replaced"
        assert (new.requires_grad, new.dtype, new.shape, new.device) == (
            old.requires_grad, old.dtype, old.shape, old.device), slot
        assert new.data == old.data, f"{slot}: values changed"
