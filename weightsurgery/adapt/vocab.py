"""Token embeddings and LM heads: resize the vocabulary.

For an embedding (or LM head) ``E`` of shape ``(V, D)`` resized to ``V'`` rows:
the first ``min(V, V')`` rows are copied; a shrink drops the rest. New rows
(``V' > V``) come from one of:

* ``"mean"``: ``mu = mean_v E[v]``, every new row ``= mu``. New tokens then
  score like an average token, which keeps the softmax from being dominated by
  random rows (Hewitt, "Initializing new word embeddings", 2021).
* ``"covariance"``: as in transformers' ``resize_token_embeddings``: sample
  ``N(mu, 1e-9 * Sigma)``, ``Sigma = (E - mu)^T (E - mu) / V``, seeded by
  ``seed``; falls back to ``"mean"`` when ``Sigma`` is not positive definite.
* ``"init"``: take the new rows from ``fill``, the target's fallback init.

A 1-D tensor (an LM-head bias) follows the same rule on its entries.
Tied input/output embeddings are one tensor in the target, so resizing the
canonical key resizes both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from weightsurgery.adapt.registry import one_tensor, register_adapter
from weightsurgery.errors import AdapterError

__all__ = ["NEW_ROW_MODES", "resize_rows"]

logger = logging.getLogger(__name__)

NewRows = Literal["mean", "covariance", "init"]
NEW_ROW_MODES: tuple[str, ...] = ("mean", "covariance", "init")
_COVARIANCE_SCALE = 1e-9


def resize_rows(
    weight: Tensor,
    num_rows: int,
    *,
    new_rows: NewRows = "mean",
    seed: int | None = None,
    fill: Tensor | None = None,
) -> Tensor:
    """Resize ``weight`` to ``num_rows`` along dim 0: copy the overlap, make the new rows.

    Args:
        weight: ``(V, D)`` embedding/LM-head weight or ``(V,)`` bias.
        num_rows: the new vocabulary size ``V'``.
        new_rows: how new rows are made: ``"mean"``, ``"covariance"`` or ``"init"``.
        seed: seeds ``"covariance"`` sampling (default 0, so plans stay reproducible).
        fill: ``(V', ...)`` from the fallback init, for ``new_rows="init"``.

    Returns:
        A new ``(V', ...)`` tensor in ``weight``'s dtype (statistics in float32).

    Raises:
        AdapterError: an unknown mode, a 0-dim or empty ``weight``, or
            ``"init"`` without ``fill``.

    Example:
        >>> import torch
        >>> resize_rows(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 3).tolist()
        [[1.0, 2.0], [3.0, 4.0], [2.0, 3.0]]
        >>> resize_rows(torch.tensor([1.0, 2.0, 3.0]), 2).tolist()
        [1.0, 2.0]
    """
    if new_rows not in NEW_ROW_MODES:
        raise AdapterError(f"vocab: new_rows={new_rows!r}; valid values are {', '.join(NEW_ROW_MODES)}")
    if weight.dim() == 0 or weight.shape[0] == 0:
        raise AdapterError(f"vocab: cannot resize a tensor of shape {tuple(weight.shape)}")
    old = weight.shape[0]
    keep = weight[: min(old, num_rows)]
    added = num_rows - old
    if added <= 0:
        return keep.clone()
    if new_rows == "init":
        if fill is None:
            raise AdapterError("vocab: new_rows='init' needs fill= from the fallback init")
        extra = fill[old:].to(device=weight.device, dtype=weight.dtype)
    else:
        extra = _sample_rows(weight, added, covariance=new_rows == "covariance", seed=seed)
    return torch.cat([keep, extra], dim=0)


def _sample_rows(weight: Tensor, count: int, *, covariance: bool, seed: int | None) -> Tensor:
    flat = weight.reshape(weight.shape[0], -1).float()
    mean = flat.mean(dim=0)
    rows = mean.expand(count, -1)
    if covariance and weight.dim() > 1:
        centered = flat - mean
        sigma = centered.T @ centered / flat.shape[0]
        chol, info = torch.linalg.cholesky_ex(_COVARIANCE_SCALE * sigma.double())
        if int(info) == 0:
            gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
            noise = torch.randn(count, flat.shape[1], generator=gen, dtype=torch.float64)
            rows = (mean.double() + noise @ chol.T).float()
        else:
            logger.info("vocab: covariance of %d rows is not positive definite; new rows use the mean", flat.shape[0])
    return rows.reshape(count, *weight.shape[1:]).to(weight.dtype).contiguous()


def _uses_fill(args: Mapping[str, Any]) -> bool:
    return args.get("new_rows", "mean") == "init"


def _copied_rows(args: Mapping[str, Any], source_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> int:
    return min(source_shape[0], target_shape[0]) if source_shape else 0


@register_adapter("vocab", needs_fill=_uses_fill, source_rows=_copied_rows)
def _vocab(
    tensors: Sequence[Tensor],
    target_shape: tuple[int, ...],
    *,
    new_rows: NewRows = "mean",
    seed: int | None = None,
    fill: Tensor | None = None,
) -> Tensor:
    """Vocabulary resize ``V -> V'``: overlap copied, new rows by mean, seeded covariance sample, or fill.

    Options: ``new_rows`` (``mean``/``covariance``/``init``), ``seed``.
    """
    src = one_tensor(tensors, "vocab")
    if tuple(src.shape[1:]) != tuple(target_shape[1:]):
        raise AdapterError(f"vocab: source {tuple(src.shape)} and target {target_shape} must differ only in dim 0")
    return resize_rows(src, target_shape[0], new_rows=new_rows, seed=seed, fill=fill)
