"""Recipes: a reusable, file-backed bundle of rename, key-map, adapt and init rules.

A recipe captures the surgery that makes one family of checkpoints fit one
family of models, so it can be reviewed, versioned and re-run::

    format: weightsurgery.recipe/1
    description: timm ViT-Ti/16 at 224 -> 384, 10 classes
    rename:                      # regex -> replacement on source keys, in order (re.sub)
      '^module\\.': ''
    key_map:                     # exact target key <- source key, before everything else
      head.weight: fc.weight
    adapt:                       # AdaptRule, first match wins
      - pattern: pos_embed
        adapter: pos_embed
        args: {interpolation: bilinear}
      - pattern: 're:blocks\\.(\\d+)\\.attn\\.qkv\\.weight'
        adapter: fuse
        sources: ['blocks.\\1.attn.q.weight', 'blocks.\\1.attn.k.weight', 'blocks.\\1.attn.v.weight']
    init:                        # target-key glob or 're:' regex -> init spec string
      'head.*': zeros

``rename`` and ``init`` may also be lists of ``[pattern, value]`` pairs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from weightsurgery._io import atomic_write_text
from weightsurgery.adapt.rules import AdaptRule
from weightsurgery.errors import AdapterError, InitSpecError, RecipeError, SourceNotFoundError

__all__ = ["RECIPE_FORMAT", "Recipe"]

RECIPE_FORMAT = "weightsurgery.recipe/1"
_FIELDS = ("format", "description", "rename", "key_map", "adapt", "init")
_SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Recipe:
    """Rename rules, an exact key map, adapter rules and init rules, in order.

    Attributes:
        rename: ``(regex, replacement)`` pairs applied in order to source keys
            with :func:`re.sub` (what ``transfer(rename=...)`` takes).
        key_map: an exact ``{target_key: source_key}`` map (what
            ``transfer(key_map=...)`` takes); the caller's entries win over it.
        adapt: :class:`~weightsurgery.adapt.AdaptRule` s; the first match wins
            (what ``transfer(adapt=...)`` takes).
        init: ``{pattern: spec}``, in order: a target-key glob or ``re:`` regex
            (or ``"*"`` for the fallback) and an init spec string such as
            ``"trunc_normal(std=0.02)"`` (what ``transfer(init=...)`` takes).
        description: free text.

    ``rename`` also accepts a mapping, ``init`` a list of pairs; both keep their order.

    Example:
        >>> r = Recipe(rename={r"^module\\.": ""}, init={"head.*": "zeros"})
        >>> r.rename
        (('^module\\\\.', ''),)
        >>> Recipe.from_yaml(r.to_yaml()) == r
        True
    """

    rename: Pairs = ()
    adapt: tuple[AdaptRule, ...] = ()
    init: Mapping[str, str] = field(default_factory=dict, hash=False)
    description: str = ""
    key_map: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rename", _pairs(self.rename, "rename", None))
        if not isinstance(self.key_map, Mapping) or not all(
            isinstance(t, str) and isinstance(s, str) for t, s in self.key_map.items()
        ):
            raise RecipeError(
                "key_map must map target keys to source keys {target_key: source_key}, as strings; "
                "regex rules [pattern, replacement] go in rename",
                field="key_map",
            )
        object.__setattr__(self, "key_map", dict(self.key_map))
        init = _pairs(self.init, "init", None)
        duplicated = sorted({p for p, _ in init if sum(q == p for q, _ in init) > 1})
        if duplicated:
            raise RecipeError(f"init lists pattern(s) {duplicated} more than once; keep one spec each", field="init")
        object.__setattr__(self, "init", dict(init))
        object.__setattr__(self, "adapt", _rules(self.adapt, None))
        for i, (pattern, _) in enumerate(self.rename):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RecipeError(
                    f"rename[{i}]: {pattern!r} is not a valid regex ({exc})", field=f"rename[{i}]"
                ) from exc
        _check_init(self.init, None)

    # --- dict / JSON / YAML --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-ready dict (``rename`` and ``init`` as ordered mappings)."""
        out: dict[str, Any] = {"format": RECIPE_FORMAT}
        if self.description:
            out["description"] = self.description
        out["rename"] = (
            dict(self.rename) if len(dict(self.rename)) == len(self.rename) else [list(p) for p in self.rename]
        )
        if self.key_map:
            out["key_map"] = dict(self.key_map)
        out["adapt"] = [r.to_dict() for r in self.adapt]
        out["init"] = dict(self.init)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None) -> Recipe:
        """Build a recipe from :meth:`to_dict`'s layout.

        Args:
            data: the parsed recipe.
            path: the file it came from, named in errors.

        Raises:
            RecipeError: a wrong ``format``, an unknown or malformed field; the
                message names the file and the field.
        """
        where = f"{path}: " if path is not None else ""
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where}a recipe must be a mapping with keys {', '.join(_FIELDS)}", path=path)
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise RecipeError(
                f"{where}unknown recipe field(s) {', '.join(unknown)}; valid fields are {', '.join(_FIELDS)}",
                path=path,
                field=unknown[0],
            )
        fmt = data.get("format", RECIPE_FORMAT)
        if fmt != RECIPE_FORMAT:
            raise RecipeError(
                f"{where}format is {fmt!r}; this version reads {RECIPE_FORMAT!r}", path=path, field="format"
            )
        description = data.get("description") or ""
        if not isinstance(description, str):
            raise RecipeError(f"{where}description must be a string", path=path, field="description")
        try:
            return cls(
                rename=data.get("rename") or (),
                key_map=data.get("key_map") or {},
                adapt=data.get("adapt") or (),
                init=data.get("init") or (),
                description=description,
            )
        except RecipeError as exc:
            if path is None or exc.path is not None:
                raise
            raise RecipeError(f"{where}{exc}", path=path, field=exc.field) from exc

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, *, path: str | os.PathLike[str] | None = None) -> Recipe:
        """Parse a JSON recipe.

        Raises:
            RecipeError: invalid JSON (with line and column) or a bad field.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested deeper than any recipe
            where = f"{path}: " if path is not None else ""
            raise RecipeError(f"{where}not valid JSON ({exc})", path=path) from exc
        return cls.from_dict(data, path=path)

    def to_yaml(self) -> str:
        import yaml  # imported when a recipe is written as YAML, not with the package

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, *, path: str | os.PathLike[str] | None = None) -> Recipe:
        """Parse a YAML recipe (``yaml.safe_load``: no Python tags).

        Raises:
            RecipeError: invalid YAML (with the position) or a bad field.
        """
        import yaml

        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            where = f"{path}: " if path is not None else ""
            raise RecipeError(f"{where}not valid YAML ({exc})", path=path) from exc
        return cls.from_dict(data if data is not None else {}, path=path)

    # --- files ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a recipe from ``.json``, ``.yaml`` or ``.yml``.

        Raises:
            SourceNotFoundError: the file does not exist.
            RecipeError: an unknown suffix, or a malformed recipe.

        Example:
            >>> import tempfile, pathlib
            >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.yaml"
            >>> Recipe(init={"head.*": "zeros"}).save(p)
            >>> Recipe.load(p).init
            {'head.*': 'zeros'}
        """
        p = Path(path)
        kind = _kind(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"recipe file {p} does not exist", source=p) from exc
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{p}: not a text file ({exc.reason} at byte {exc.start})", path=p) from exc
        return cls.from_json(text, path=p) if kind == "json" else cls.from_yaml(text, path=p)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the recipe atomically, as JSON or YAML by ``path``'s suffix.

        Raises:
            RecipeError: an unknown suffix.
        """
        p = Path(path)
        atomic_write_text(p, self.to_json() + "\n" if _kind(p) == "json" else self.to_yaml())


def _kind(path: Path) -> str:
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise RecipeError(
            f"{path}: unknown recipe suffix {path.suffix!r}; use one of {', '.join(_SUFFIXES)}", path=path
        ) from None


def _pairs(value: Any, name: str, path: Any) -> Pairs:
    """A mapping or a sequence of 2-item pairs of strings -> a tuple of pairs."""
    where = f"{path}: " if path is not None else ""
    items = list(value.items()) if isinstance(value, Mapping) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise RecipeError(
            f"{where}{name} must be a mapping {{pattern: value}} or a list of [pattern, value] pairs",
            path=path,
            field=name,
        )
    out = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise RecipeError(
                f"{where}{name}[{i}] is {item!r}; each entry is a pair of strings [pattern, value]",
                path=path,
                field=f"{name}[{i}]",
            )
        out.append((item[0], item[1]))
    return tuple(out)


def _rules(value: Any, path: Any) -> tuple[AdaptRule, ...]:
    where = f"{path}: " if path is not None else ""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise RecipeError(f"{where}adapt must be a list of rules", path=path, field="adapt")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(item if isinstance(item, AdaptRule) else AdaptRule.from_dict(item))
        except AdapterError as exc:
            raise RecipeError(f"{where}adapt[{i}]: {exc}", path=path, field=f"adapt[{i}]") from exc
    return tuple(out)


def _check_init(init: Mapping[str, str], path: Any) -> None:
    from weightsurgery.init import parse_spec

    where = f"{path}: " if path is not None else ""
    for i, (pattern, spec) in enumerate(init.items()):
        try:
            parse_spec(spec)
        except InitSpecError as exc:
            raise RecipeError(f"{where}init[{i}] ({pattern!r}): {exc}", path=path, field=f"init[{i}]") from exc
