"""Shape adapters: small pure tensor functions, a registry, and the rules that pick them.

Registered adapters (``weightsurgery.adapt.ADAPTERS``), one module per family:

==================  ===========================  ==================================================
name                module                       what it does
==================  ===========================  ==================================================
``head``            :mod:`.head`                 classifier subset / reorder / grow (``rows``)
``input_channels``  :mod:`.channels`             first-conv ``C -> C'`` (sum, or repeat and rescale)
``pos_embed``       :mod:`.posembed`             ViT position-embedding grid resample
``patch_embed``     :mod:`.patchembed`           FlexiViT patch-kernel resample
``vocab``           :mod:`.vocab`                token-embedding / LM-head vocabulary resize
``fuse``/``split``  :mod:`.fuse`                 ``q, k, v <-> qkv``, ``gate, up <-> gate_up``
``transpose``       :mod:`.transpose`            ``Conv1D <-> Linear`` (and any permutation)
``reshape``         :mod:`.transpose`            equal element count, only by explicit rule
``squeeze``         :mod:`.squeeze`              add / drop size-1 dims (``(C, 1, 1) <-> (C,)``), lossless
``rope``            :mod:`.layouts`              llama.cpp's rotary q/k row order -> Hugging Face's
==================  ===========================  ==================================================

:mod:`.layouts` also holds the other frameworks' layout conversions (HWIO convs,
``(in, out)`` Dense, depthwise, gates, NHWC flatten) that their readers apply.

The planner calls :func:`propose_adapter` for a name-matched pair whose shapes
differ (``on_mismatch="adapt"``) and :func:`match_rule` for explicit
:class:`AdaptRule` s; apply calls :func:`run_adapter`.

Example:
    >>> import torch
    >>> from weightsurgery.adapt import run_adapter
    >>> head = torch.arange(6.0).reshape(3, 2)
    >>> run_adapter("head", [head], (2, 2), {"rows": [2, 0]}).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

from weightsurgery.adapt.channels import adapt_input_channels as adapt_input_channels
from weightsurgery.adapt.fuse import fuse_parts as fuse_parts
from weightsurgery.adapt.fuse import split_part as split_part
from weightsurgery.adapt import layouts as layouts  # registers "rope"
from weightsurgery.adapt.head import head_rows as head_rows
from weightsurgery.adapt.head import select_rows as select_rows
from weightsurgery.adapt.patchembed import resample_patch_kernel as resample_patch_kernel
from weightsurgery.adapt.posembed import infer_grids as infer_grids
from weightsurgery.adapt.posembed import resample_pos_embed as resample_pos_embed
from weightsurgery.adapt.propose import AdaptContext as AdaptContext
from weightsurgery.adapt.propose import propose_adapter as propose_adapter
from weightsurgery.adapt.registry import ADAPTERS as ADAPTERS
from weightsurgery.adapt.registry import Adapter as Adapter
from weightsurgery.adapt.registry import get_adapter as get_adapter
from weightsurgery.adapt.registry import register_adapter as register_adapter
from weightsurgery.adapt.registry import run_adapter as run_adapter
from weightsurgery.adapt.rules import AdaptRule as AdaptRule
from weightsurgery.adapt.rules import match_rule as match_rule
from weightsurgery.adapt.squeeze import squeezable as squeezable
from weightsurgery.adapt.squeeze import squeeze_to as squeeze_to
from weightsurgery.adapt.transpose import permute_dims as permute_dims
from weightsurgery.adapt.vocab import resize_rows as resize_rows

__all__ = [
    "ADAPTERS",
    "AdaptContext",
    "AdaptRule",
    "Adapter",
    "adapt_input_channels",
    "fuse_parts",
    "get_adapter",
    "head_rows",
    "infer_grids",
    "match_rule",
    "permute_dims",
    "propose_adapter",
    "register_adapter",
    "resample_patch_kernel",
    "resample_pos_embed",
    "resize_rows",
    "run_adapter",
    "select_rows",
    "split_part",
    "squeezable",
    "squeeze_to",
]
