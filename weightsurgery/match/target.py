"""What the matcher knows about the target: keys, shapes, dtypes, owners, aliases.

Built from a module without reading any tensor data, so it works on models
built on the meta device too.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from weightsurgery.errors import ModuleProtocolError
from weightsurgery.sources.checkpoint import TensorMeta
from weightsurgery.sources.shared import tensor_identity

__all__ = ["TargetSpec", "TargetTensor"]


@dataclass(frozen=True, slots=True)
class TargetTensor:
    """One tensor of the target's state dict.

    Attributes:
        key: the state-dict key, e.g. ``"layer1.0.conv1.weight"``.
        shape: its shape.
        dtype: its dtype.
        module: the owning module's path (``""`` for the root).
        module_type: the owning module's class.
        name: the tensor's name on its module (``"weight"``).
        is_buffer: a buffer rather than a parameter.
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    module: str
    module_type: type
    name: str
    is_buffer: bool = False

    @property
    def meta(self) -> TensorMeta:
        return TensorMeta(self.shape, self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TargetSpec:
    """Every tensor a transfer can fill, in module order.

    Attributes:
        tensors: canonical key -> tensor, in ``state_dict`` order. Tied aliases
            are not listed here.
        aliases: alias key -> canonical key for tied or shared tensors (for
            example a language-model head tied to the embedding): the same
            object, or the same view of the same bytes
            (:func:`weightsurgery.sources.shared.tensor_identity`).
        extra_state: paths of modules that take extra state (their class overrides
            ``set_extra_state``); torch saves it as ``<path>._extra_state``.
    """

    tensors: Mapping[str, TargetTensor]
    aliases: Mapping[str, str]
    extra_state: tuple[str, ...] = ()

    @classmethod
    def from_module(cls, module: nn.Module) -> TargetSpec:
        """Describe ``module``'s persistent state.

        Raises:
            ModuleProtocolError: a lazy module (``nn.LazyLinear``) whose
                parameters are not initialized yet; the error names it.

        Example:
            >>> from torch import nn
            >>> spec = TargetSpec.from_module(nn.Sequential(nn.Linear(2, 3)))
            >>> list(spec.tensors)
            ['0.weight', '0.bias']
        """
        tensors: dict[str, TargetTensor] = {}
        aliases: dict[str, str] = {}
        seen: dict[Hashable, str] = {}
        extra: dict[str, None] = {}  # module paths, in order (a dict: one lookup per module)
        for mod_path, mod in module.named_modules(remove_duplicate=False):
            if type(mod).set_extra_state is not nn.Module.set_extra_state:
                extra[mod_path] = None
            if not mod._parameters and not mod._buffers:
                continue  # a container: nothing of its own
            prefix = f"{mod_path}." if mod_path else ""
            _check_not_lazy(mod_path, mod)
            non_persistent = getattr(mod, "_non_persistent_buffers_set", set())
            entries = [(n, t, False) for n, t in mod._parameters.items()]
            entries += [(n, t, True) for n, t in mod._buffers.items() if n not in non_persistent]
            for name, tensor, is_buffer in entries:
                if tensor is None:
                    continue
                key = prefix + name
                if key in tensors or key in aliases:
                    continue
                ident = tensor_identity(tensor)
                if ident in seen:
                    aliases[key] = seen[ident]
                    continue
                seen[ident] = key
                tensors[key] = TargetTensor(
                    key=key,
                    shape=tuple(tensor.shape),
                    dtype=tensor.dtype,
                    module=mod_path,
                    module_type=type(mod),
                    name=name,
                    is_buffer=is_buffer,
                )
        return cls(tensors=tensors, aliases=aliases, extra_state=tuple(extra))

    def keys(self) -> list[str]:
        """Canonical keys followed by alias keys."""
        return list(self.tensors) + list(self.aliases)

    def canonical(self, key: str) -> str:
        return self.aliases.get(key, key)

    def metas(self) -> dict[str, TensorMeta]:
        return {k: t.meta for k, t in self.tensors.items()}


def _check_not_lazy(path: str, mod: nn.Module) -> None:
    lazy = [n for n, p in mod._parameters.items() if p is not None and nn.parameter.is_lazy(p)]
    lazy += [n for n, b in mod._buffers.items() if b is not None and nn.parameter.is_lazy(b)]
    if lazy:
        where = repr(path) if path else "<root>"
        raise ModuleProtocolError(
            f"target module {where} ({type(mod).__name__}) is lazy: {', '.join(lazy)} not initialized yet, "
            "so it has no shape to match; run one forward pass with a sample input (or build the non-lazy "
            "module) before transferring into it. Nothing was changed",
            module=path or "<root>",
        )
