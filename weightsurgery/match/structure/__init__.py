"""Structural alignment: match modules by their place in the network when names do not line up.

For checkpoints from another library (``_blocks.7._depthwise_conv`` against
``blocks.2.1.conv_dw``), names say little; shapes in order say a lot. This
strategy:

1. groups each side's open tensors by owning module and gives every module a
   leaf-name-blind *signature* (shapes and dtype kinds);
2. aligns the two module sequences in order by dynamic programming
   (:mod:`~weightsurgery.match.structure.align`), gaps allowed on both sides,
   so inserted and removed modules, new heads, extra blocks and backbone
   slices cost nothing. Every aligned module scores one unit, whatever its
   tensor count; name similarity (:mod:`~weightsurgery.match.tokens`) only
   breaks ties between alignments of equal structure;
3. keeps a module pair only if *every* optimal alignment makes it, and it sits
   in a run of at least :data:`MIN_RUN` consecutive aligned modules (an anchor);
4. pairs same-signature siblings whose order tells nothing (``q``, ``k``,
   ``v``) by names, or not at all (:mod:`~weightsurgery.match.structure.siblings`);
5. in module order, withdraws a pair that order alone chose among *open
   twins* (below);
6. when a side's keys are sorted (a safetensors file), trusts the
   numeric-aware name order where it provably is module order
   (:func:`~weightsurgery.match.structure.groups.names_give_order`: numbered
   siblings, and named ones only where their order cannot mislead); otherwise
   it aligns numbered containers instead and pairs the modules inside them
   (:mod:`~weightsurgery.match.structure.bags`). A sorted side is always
   aligned in numeric-aware order (``features.2`` before ``features.10``), and
   a pair inside a container with an identical, wholly unpaired twin is
   withdrawn there: one source block against two, order only guessed which;
7. matches a leftover module whose signature is unique on both sides, if it
   holds a weight of two or more dimensions or the names agree (``conv_stem``
   sorts after ``blocks``); a module withdrawn or reported ambiguous is never
   a leftover, so this elimination builds on certain pairs only;
8. loads nothing unless the two sides are clearly related: at least
   :data:`MIN_COVERAGE` of the smaller side explained, with an anchor,
   prior name matches, or every open module explained.

What evidence is enough. Order pairs two same-shaped modules only as far as
both sides order them alike, and libraries do not always: torchvision's RegNet
registers the shortcut (a 1x1 conv and a norm) before the branch whose first
1x1 conv and norm have the same shapes; timm registers it last. Shapes cannot
tell such a reordering from a shortcut dropped on one side and added on the
other, so the alignment must not be asked to: (a) scoring modules, not
tensors, keeps a norm's four vectors from outvoting a conv, which turned that
reordering into one strictly best (and wrong) alignment; the reordering then
shows as a tie, reported as ambiguous. (b) A pair whose nearest same-shaped
neighbour is left open on *both* sides, an open twin, could have been either
twin had the orders differed; it is withdrawn unless names pick it
(``downsample``/``shortcut``), and its modules are closed to later steps.

What it cannot tell apart it leaves open, with an
:class:`~weightsurgery.match.base.Abstain` naming the candidates.
"""

from weightsurgery.match.structure.outcome import MIN_COVERAGE, MIN_RUN
from weightsurgery.match.structure.strategy import match_structure

__all__ = ["MIN_COVERAGE", "MIN_RUN", "match_structure"]
