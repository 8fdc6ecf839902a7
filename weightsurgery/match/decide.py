"""Turn a strategy's match into a plan entry: the shape-mismatch policy, adapter rules and proposals.

A same-shaped plain match loads. A shape mismatch follows ``on_mismatch``
(``"init"``, ``"adapt"``: an adapter that clearly applies, ``"error"``).
Explicit :class:`~weightsurgery.adapt.AdaptRule` rules and ``classes=`` turn
matches into adapted entries. The adapters are imported only when used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from weightsurgery.match.base import Match
from weightsurgery.match.options import PlanOptions
from weightsurgery.match.plan import Action, PlanEntry
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta

__all__ = ["Decider"]


class Decider:
    """Turns a strategy's match into a plan entry, applying the shape-mismatch policy."""

    def __init__(
        self,
        source: Mapping[str, TensorMeta],
        target: TargetSpec,
        options: PlanOptions,
        metadata: Mapping[str, Any],
    ) -> None:
        self.source, self.target, self.options, self.metadata = source, target, options, metadata
        self._adapt_ctx: Any = None
        #: no rule or proposal can change a same-shape plain copy: it loads as it is
        self.plain = not options.adapt and options.classes is None

    def __call__(self, m: Match) -> PlanEntry:
        tshape = self.target.tensors[m.target].shape
        sshape = self.source[m.source].shape
        if m.adapter is None and sshape == tshape and self.plain:
            # the common case, a plain same-shape copy: no rule or proposal can change it
            return PlanEntry(m.target, Action.LOAD, m.source, tuple(m.sources), m.strategy, m.evidence,
                             source_shape=sshape)
        base = dict(target=m.target, source=m.source, sources=tuple(m.sources), strategy=m.strategy)
        if m.adapter is not None:
            return PlanEntry(
                **base,
                action=Action.ADAPT,
                evidence=m.evidence,
                adapter=m.adapter,
                adapter_args=dict(m.adapter_args),
                source_shape=sshape,
            )
        rule = self._explicit_rule(m)
        if rule is not None:
            return rule
        if self.options.classes is not None and (sshape == tshape or self.options.on_mismatch != "adapt"):
            # classes= asks for the head adapter, also for a same-size reorder and without on_mismatch="adapt".
            proposal = self._propose(m)
            if isinstance(proposal, tuple) and proposal[0] == "head":
                return PlanEntry(
                    **base,
                    action=Action.ADAPT,
                    evidence=f"{m.evidence}; classes={list(self.options.classes)}",
                    adapter="head",
                    adapter_args=dict(proposal[1]),
                    source_shape=sshape,
                )
        if sshape == tshape:
            return PlanEntry(**base, action=Action.LOAD, evidence=m.evidence, source_shape=sshape)
        why = f"shape mismatch: {m.target} {_fmt(tshape)} vs source {m.source} {_fmt(sshape)}"
        if self.options.on_mismatch == "adapt":
            proposal = self._propose(m)
            if isinstance(proposal, tuple):
                name, args = proposal
                return PlanEntry(
                    **base,
                    action=Action.ADAPT,
                    evidence=f"{m.evidence}; {why}".strip("; "),
                    adapter=name,
                    adapter_args=dict(args),
                    source_shape=sshape,
                )
            why = f"{why}; no adapter applies: {proposal}"
        return PlanEntry(m.target, Action.INIT, source=m.source, strategy=m.strategy, evidence=why, source_shape=sshape)

    # --- adapters (weightsurgery.adapt), imported only when used ---------------------------------

    def _context(self) -> Any:
        if self._adapt_ctx is None:
            from weightsurgery.adapt import AdaptContext

            self._adapt_ctx = AdaptContext(
                target=self.target,
                source=self.source,
                source_metadata=self.metadata,
                classes=self.options.classes,
                source_labels=self.options.source_labels,
            )
        return self._adapt_ctx

    def _propose(self, m: Match) -> tuple[str, dict[str, Any]] | str:
        from weightsurgery.adapt import propose_adapter

        return propose_adapter(m.target, m.source, self._context())

    def ruled(self, targets: Iterable[str]) -> dict[str, PlanEntry]:
        """Entries for targets that an explicit adapter rule fills from sources it names itself."""
        sourced = [r for r in self.options.adapt if getattr(r, "sources", ())]
        if not sourced:
            return {}
        from weightsurgery.adapt import match_rule

        out: dict[str, PlanEntry] = {}
        for key in targets:
            hit = match_rule(sourced, key, None, self._context())
            if hit is None or not hit[2]:
                continue
            name, args, sources = hit
            out[key] = PlanEntry(
                target=key,
                action=Action.ADAPT,
                source=sources[0],
                sources=tuple(sources) if len(sources) > 1 else (),
                strategy="rule",
                evidence=f"adapt rule {name} on {', '.join(sources)}",
                adapter=name,
                adapter_args=dict(args),
                source_shape=self.source[sources[0]].shape,
            )
        return out

    def _explicit_rule(self, m: Match) -> PlanEntry | None:
        if not self.options.adapt:
            return None
        from weightsurgery.adapt import match_rule

        hit = match_rule(self.options.adapt, m.target, m.source, self._context())
        if hit is None:
            return None
        name, args, sources = hit
        return PlanEntry(
            target=m.target,
            action=Action.ADAPT,
            source=sources[0],
            sources=tuple(sources) if len(sources) > 1 else (),
            strategy=m.strategy,
            evidence=f"{m.evidence}; adapt rule {name}".strip("; "),
            adapter=name,
            adapter_args=dict(args),
            source_shape=self.source[sources[0]].shape,
        )


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
