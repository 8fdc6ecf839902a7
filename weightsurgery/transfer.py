"""``transfer(src, dst)``: resolve, plan, validate, apply, report (the report is built in ``transfer_report``)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from weightsurgery._grouping import group_keys
from weightsurgery._warn import warn_user
from weightsurgery._memory import overlap_notes
from weightsurgery.apply import ApplyResult, apply_plan, complete_plan, validate_plan
from weightsurgery.distributed import ShardSession, agree_on_plan, apply_sharded, phase, session_for
from weightsurgery.errors import CoverageError, StrictTransferError
from weightsurgery.extra_state import check_strict_extra_state
from weightsurgery.match.plan import Action, Plan
from weightsurgery.match.options import MatchingOptions, PlanOptions
from weightsurgery.match.planner import make_plan, plan_unused
from weightsurgery.match.related import unrelated_reason
from weightsurgery.match.target import TargetSpec
from weightsurgery.report import Report
from weightsurgery.sources.checkpoint import Checkpoint
from weightsurgery.sources.resolve import resolve
from weightsurgery.transfer_report import build_report, loaded_numel

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch
    from typing_extensions import Unpack

__all__ = ["LOW_COVERAGE", "transfer"]

logger = logging.getLogger("weightsurgery")

#: Below this loaded fraction of target parameters *or* of target tensors, the transfer warns
#: (a big new head lowers only the first, many small new modules only the second: both are worth saying).
LOW_COVERAGE = 0.5


def transfer(
    src: Any,
    dst: nn.Module | str | Callable[..., nn.Module],
    *,
    options: PlanOptions | None = None,
    init: Any = None,
    seed: int | None = None,
    recipe: Any = None,
    plan: Plan | str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    strict: bool = False,
    freeze: bool = False,
    min_coverage: float | None = None,
    target_kwargs: Mapping[str, Any] | None = None,
    key: str | None = None,
    weights_only: bool = True,
    revision: str | None = None,
    quiet: bool = False,
    progress: Callable[[int, int], None] | None = None,
    parallelize: Callable[[nn.Module], nn.Module | None] | None = None,
    **matching: Unpack[MatchingOptions],
) -> Report:
    """Move the weights of ``src`` into ``dst`` and report what happened.

    Matching tries every strategy by default (exact names, wrapper prefixes,
    fused projections, suffixes, structural alignment) and never guesses: an
    ambiguous key is left unmatched, initialized, and reported with its reason.
    Leftovers keep their constructor's values unless ``init=`` names them.

    Args:
        src: a path (``.safetensors``, ``.pth``, ``.bin``, ``.ckpt``, a sharded
            index, a folder), a URL, ``"hf-hub:org/repo[@rev]"``, a registry name
            (``"resnet18"``, ``"timm:convnext_tiny"``), a state dict, a nested
            training checkpoint, an ``nn.Module`` or a ``Checkpoint``.
        dst: the target module, changed in place; or a factory (``"timm:NAME"``,
            ``"torchvision:NAME"``, ``"pkg.mod:callable"`` or a callable), built
            on the meta device so only the leftovers pay for init. The module is
            ``report.model``.
        options: the matching options as one
            :class:`~weightsurgery.match.options.PlanOptions`, to build once and
            reuse; each of them is also a keyword of its own (below), and a
            keyword given with ``options`` replaces that field.
        init: re-initialize leftovers: one spec (``"trunc_normal(std=0.02)"``,
            ``"reset"`` for the model's own init of each module, a spec object, a
            callable) or rules ``{pattern | module type: spec}``, first match
            wins. A leftover no rule names keeps its constructor's values
            (torch's ``load_state_dict`` semantics); a factory target built on
            ``meta`` gets them computed for exactly those tensors.
        seed: seeds the inits that run (and a factory's constructor replay),
            independent of the global RNG and of which other keys loaded. It
            does not make leftovers re-initialize.
        recipe: a ``weightsurgery.Recipe`` or a path to one (JSON/YAML): rename,
            key map, adapt and init rules, applied before those given here.
        plan: a saved :class:`~weightsurgery.match.plan.Plan` (or its JSON path)
            to re-apply without matching again.
        dry_run: plan and report only; the model is not touched.
        strict: raise if any target key would be initialized or any source key
            is unused.
        freeze: set ``requires_grad=False`` on loaded parameters.
        min_coverage: raise if less than this fraction (0..1) of the target's
            parameters would be loaded.
        target_kwargs: keyword arguments for a factory ``dst`` (``num_classes=10``).
        key: the container to take from a nested checkpoint (``"model_ema"``).
        weights_only: refuse pickles that need code (default). ``False`` is an
            explicit opt-in for trusted files, and warns.
        revision: hub revision for ``hf-hub:`` sources.
        quiet: no download progress bars.
        progress: ``progress(done, total)`` as tensors are staged.
        parallelize: for a factory ``dst`` in a ``torch.distributed`` job,
            ``parallelize(model)`` shards the model once it is built on ``meta``
            (``fully_shard``, ``parallelize_module``; it may return the module to
            use), before it is planned and filled: each rank then reads only its
            shards. Every rank calls ``transfer`` with the same one.
        **matching: the fields of ``PlanOptions``, as keywords:

            - ``rename``: regex rules on source keys, ``{pattern: replacement}`` or
              ``[(pattern, replacement), ...]``, applied in order (``re.sub``), as
              transformers' ``key_mapping``: ``rename={r"^backbone\\.": ""}``.
            - ``key_map``: an exact ``{target_key: source_key}`` map, the direction
              of ``report.mapping``: ``key_map={"fc.weight": "head.w"}``.
            - ``exclude``: target-key globs (or ``re:`` regexes) never loaded, e.g.
              ``"fc.*"`` for a fresh head of the same shape; they are left over.
            - ``strategies``: restrict matching to these strategy names
              (see ``weightsurgery.match.planner.STRATEGIES``). Naming them is also
              the opt-in for a source and target that look unrelated, where by
              default nothing loads (``strategies=["exact"]`` loads the same names).
            - ``on_mismatch``: a name match of different shape: ``"init"`` (default),
              ``"adapt"`` (apply an adapter whose conditions clearly hold), ``"error"``.
            - ``adapt``: explicit adapter rules (``weightsurgery.adapt.AdaptRule``).
            - ``classes``: keep/reorder these classifier classes (indices or label names).
            - ``source_labels``: the source's class names, if its metadata lacks them.

    Returns:
        A :class:`~weightsurgery.report.Report`.

    Raises:
        SourceError: the source cannot be resolved or read (subclasses say why).
        PlanError: bad options (a rename in the form of a key map, or the other
            way round, names the parameter meant) or a plan that does not fit;
            nothing changed.
        ShapeMismatchError: ``on_mismatch="error"`` and shapes differ.
        StrictTransferError: ``strict=True`` and keys were left over.
        CoverageError: coverage under ``min_coverage``.
        TypeError: a keyword that ``transfer`` does not take (the message suggests the nearest).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from weightsurgery import PlanOptions
        >>> pretrained = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1000))
        >>> ckpt = {"state_dict": {f"model.{k}": v for k, v in pretrained.state_dict().items()}}
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
        >>> report = transfer(ckpt, model, init="zeros", seed=0)
        >>> report.initialized
        ['2.weight', '2.bias']
        >>> report.incorrect_shapes[0]
        IncorrectShape(key='2.weight', target_shape=(10, 8), source_shape=(1000, 8))
        >>> torch.equal(model[0].weight, pretrained[0].weight)
        True
        >>> opts = PlanOptions(rename={r"^model\\.": ""}, exclude="2.*")
        >>> report = transfer(ckpt, model, options=opts, seed=0)
        >>> report.records["0.weight"].strategy, report.kept  # excluded, and no init= rule: the constructor's values
        ('rename', ['2.weight', '2.bias'])
    """
    plan_options = _plan_options(options, matching)
    if recipe is not None:
        plan_options, init = _merge_recipe(recipe, plan_options, init)
    if min_coverage is not None and not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage={min_coverage} must lie between 0 and 1")
    from weightsurgery.init import InitRules

    if parallelize is not None and (isinstance(dst, nn.Module) or not callable(parallelize)):
        raise TypeError("parallelize= takes a callable that shards a factory target once it is built on meta; "
                        "a built module is sharded before the call: fully_shard(model) or parallelize_module(...), "
                        "then transfer(src, model)" if callable(parallelize) else
                        f"parallelize= must be a callable model -> model, not {type(parallelize).__name__}")
    # a model with DTensor parameters, or one that parallelize= will shard: every rank runs each step, or all stop
    session = session_for(dst, will_shard=parallelize is not None)
    with phase(session, "resolve"):
        rules = InitRules.from_user(init)  # a bad spec fails before any download
        checkpoint = resolve(src, key=key, weights_only=weights_only, revision=revision, quiet=quiet)
    with contextlib.ExitStack() as cleanup:
        if checkpoint is not src:  # close what we opened; a caller's Checkpoint stays theirs
            cleanup.callback(checkpoint.close)
        return _run(checkpoint, dst, target_kwargs, rules, seed, plan_options, plan=plan, dry_run=dry_run,
                    strict=strict, freeze=freeze, min_coverage=min_coverage, progress=progress, session=session,
                    parallelize=parallelize)


def _plan_options(options: PlanOptions | None, matching: Mapping[str, Any]) -> PlanOptions:
    """``options`` with the matching keywords laid over it; an unknown keyword is a ``TypeError`` with a hint."""
    if options is not None and not isinstance(options, PlanOptions):
        raise TypeError(
            f"options= takes a PlanOptions, not {type(options).__name__}; e.g. options=PlanOptions(exclude='fc.*')"
        )
    names = [f.name for f in dataclasses.fields(PlanOptions)]
    unknown = [k for k in matching if k not in names]
    if unknown:
        own = [p for p in inspect.signature(transfer).parameters if p not in ("src", "dst", "matching")]
        hint = difflib.get_close_matches(unknown[0], [*names, *own], n=1)
        raise TypeError(
            f"transfer() got an unexpected keyword argument {unknown[0]!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; the matching options are {', '.join(names)}")
        )
    return dataclasses.replace(options or PlanOptions(), **matching)


def _run(
    checkpoint: Checkpoint, dst: Any, target_kwargs: Mapping[str, Any] | None, rules: Any, seed: int | None,
    options: PlanOptions, *, plan: Plan | str | os.PathLike[str] | None, dry_run: bool, strict: bool,
    freeze: bool, min_coverage: float | None, progress: Callable[[int, int], None] | None,
    session: ShardSession | None = None, parallelize: Callable[[nn.Module], nn.Module | None] | None = None,
) -> Report:
    with phase(session, "plan") as step:
        module, replay, target, the_plan, notes = _plan(checkpoint, dst, target_kwargs, rules, options, plan=plan,
                                                        dry_run=dry_run, strict=strict, min_coverage=min_coverage,
                                                        parallelize=parallelize)
        if session is not None:
            agree_on_plan(step, the_plan, target)

    result = ApplyResult()
    if not dry_run:
        apply = apply_plan if session is None else functools.partial(apply_sharded, session=session)
        result = apply(the_plan, checkpoint, module, target, init_rules=rules, seed=seed, freeze=freeze,
                       progress=progress, constructor=replay.values if replay is not None else None)
    ranks = [s.to_dict() for s in session.gather_stats()] if session is not None else []
    report = build_report(the_plan, checkpoint, target, rules, result, applied=not dry_run, warnings=notes,
                          model=module, ranks=ranks)
    logger.info("weightsurgery: %s", report.summary())
    return report


def _plan(
    checkpoint: Checkpoint, dst: Any, target_kwargs: Mapping[str, Any] | None, rules: Any, options: PlanOptions, *,
    plan: Plan | str | os.PathLike[str] | None, dry_run: bool, strict: bool, min_coverage: float | None,
    parallelize: Callable[[nn.Module], nn.Module | None] | None = None,
) -> tuple[nn.Module, Any, TargetSpec, Plan, list[str]]:
    """Build the target, make (or load) the plan and run the checks that need no tensor data."""
    module, replay = _build(dst, _with_source_config(dst, target_kwargs, checkpoint))
    if parallelize is not None:
        shaped = parallelize(module)
        module = module if shaped is None else shaped
        if not isinstance(module, nn.Module):
            raise TypeError(f"parallelize= returned {type(module).__name__}, not the module (or None)")
    target = TargetSpec.from_module(module)

    if plan is not None:
        the_plan = complete_plan(plan if isinstance(plan, Plan) else Plan.load(plan), target)
        validate_plan(the_plan, checkpoint, target)
        # what goes unused is a fact about the checkpoint applied now, not about the one the plan was saved from
        the_plan = dataclasses.replace(the_plan, unused=plan_unused(the_plan.entries, checkpoint, checkpoint.metadata))
    else:
        the_plan = make_plan(
            checkpoint.metas, target, options, source_metadata=checkpoint.metadata,
            source_name=checkpoint.origin.describe(),
        )
    init_keys = [e.target for e in the_plan.entries.values() if e.action is Action.INIT]
    rules.check({k: target.tensors[k] for k in init_keys})

    notes = _check_coverage(the_plan, target, checkpoint, min_coverage)
    if checkpoint.metadata.get("epsilon"):  # another framework's normalizations (Keras uses 1e-3)
        from weightsurgery.match.frameworks import epsilon_notes

        for note in epsilon_notes(the_plan, module, checkpoint.metadata):
            warn_user(note)
            notes.append(note)
    if dry_run:  # values are not read on a dry run: say what apply will check
        notes += overlap_notes(module, target, the_plan)
    if strict:
        _check_strict(the_plan, init_keys)
        check_strict_extra_state(the_plan, target, checkpoint.metadata.get("extra_state", {}))
    return module, replay, target, the_plan, notes


def _with_source_config(dst: Any, kwargs: Mapping[str, Any] | None, checkpoint: Checkpoint) -> Mapping[str, Any] | None:
    """A ``transformers:CLASS`` target without ``config=`` gets the ``config.json`` beside the source's weights."""
    if not (isinstance(dst, str) and dst.startswith("transformers:")) or (kwargs and "config" in kwargs):
        return kwargs
    from pathlib import Path

    for place in [Path(checkpoint.origin.location), *(Path(f).parent for f in checkpoint.origin.files[:1])]:
        found = place / "config.json" if place.is_dir() else place.parent / "config.json"
        if found.is_file():
            return {**dict(kwargs or {}), "config": str(found)}
    return kwargs


def _build(dst: Any, kwargs: Mapping[str, Any] | None) -> tuple[nn.Module, Any]:
    """The target module, and the constructor replay of a factory target built on ``meta``."""
    if isinstance(dst, nn.Module):
        if kwargs:
            raise TypeError("target_kwargs only apply when dst is a factory, not a built module")
        return dst, None
    from weightsurgery.factory import build

    built = build(dst, meta=True, **dict(kwargs or {}))
    return built.model, built.replay


def _merge_recipe(recipe: Any, options: PlanOptions, init: Any) -> tuple[PlanOptions, Any]:
    from weightsurgery.recipe import Recipe

    r = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)
    merged = dataclasses.replace(
        options,
        rename=(*r.rename, *options.rename),
        key_map={**r.key_map, **options.key_map},
        adapt=(*r.adapt, *options.adapt),
    )
    merged_init = init
    if r.init:
        if init is None:
            merged_init = dict(r.init)
        elif isinstance(init, Mapping):
            merged_init = {**r.init, **init}
        else:
            merged_init = {**r.init, "*": init}
    return merged, merged_init


def _check_coverage(plan: Plan, target: TargetSpec, checkpoint: Checkpoint, required: float | None) -> list[str]:
    filled = [k for k, e in plan.entries.items() if e.action in (Action.LOAD, Action.ADAPT)]
    total = sum(t.numel for t in target.tensors.values())
    loaded = sum(loaded_numel(plan.entries[k], target, checkpoint) for k in filled)  # a grown head: its copied rows
    coverage = loaded / total if total else 1.0
    tensor_coverage = len(filled) / len(target.tensors) if target.tensors else 1.0
    notes = []
    if required is not None and coverage < required:
        raise CoverageError(
            f"only {coverage:.1%} of the target's parameters would load from {checkpoint.origin.describe()}, "
            f"under min_coverage={required:.1%}; check that source and target are the same architecture, "
            "or add rename rules",
            coverage=coverage,
            required=required,
        )
    refused = unrelated_reason(plan.entries.values())
    origin = checkpoint.origin.describe()
    if refused is not None:
        what = "nothing loaded" if not filled else f"only the {len(filled)} tensors that your own map or rules name loaded"
        note = (
            f"{what} from {origin}: {refused}; every other name match was refused (the reason is on each key). "
            "Pass strategies=[...] (for example strategies=['exact']) to load the name matches anyway"
        )
    elif not filled and target.tensors:
        held = "holds no tensors" if not len(checkpoint) else "has no tensor that matches the target"
        note = f"nothing loaded: {origin} {held}; none of its {len(target.tensors)} target tensors loads"
    elif min(coverage, tensor_coverage) < LOW_COVERAGE:
        note = (
            f"only {coverage:.1%} of the target's parameters ({len(filled)} of {len(target.tensors)} tensors) "
            f"load from {origin}; the rest does not load. If source and target are meant to be the same "
            "architecture, read the reasons in the report, or add rename rules"
        )
    else:
        return notes
    warn_user(note)
    notes.append(note)
    return notes


def _check_strict(plan: Plan, init_keys: list[str]) -> None:
    if not init_keys and not plan.unused:
        return
    lines = []
    if init_keys:
        lines.append(f"target keys that would be initialized ({len(init_keys)}):")
        lines += [f"  {g}" for g in group_keys(init_keys)]
    if plan.unused:
        lines.append(f"source keys that would go unused ({len(plan.unused)}):")
        lines += [f"  {g}" for g in group_keys(plan.unused)]
    raise StrictTransferError(
        "strict=True: the source does not fill the target exactly; nothing was changed. "
        "Pass strict=False to initialize the leftovers, or rename= to map them.\n" + "\n".join(lines),
        missing=init_keys,
        unused=plan.unused,
    )
