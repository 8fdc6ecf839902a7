"""Keras files, read with ``h5py`` alone (no TensorFlow, no Keras import).

* **Keras 3** ``.keras``: a zip holding ``config.json`` and ``model.weights.h5``;
  a layer's variables are ``layers/<path>/vars/0, 1, ...``, named by their class
  (:data:`~weightsurgery.sources.frameworks.keras_layers.VAR_NAMES`).
* **Keras 2 / legacy** ``.h5``: the ``model_config`` attribute and
  ``model_weights/<layer>/<weight_name>`` datasets, named in ``weight_names``.
* A bare ``.weights.h5`` (``model.save_weights``) has no config: no layer's class
  is known, so every variable stays undecided and nothing is copied.

Keys are the Keras layer names with PyTorch's leaf names (``block1_conv1.weight``,
``batch_normalization.running_var``), nested models joined with dots, in the
config's layer order (``metadata["order"]`` says so). Layouts follow
:mod:`~weightsurgery.sources.frameworks.keras_layers`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from weightsurgery.errors import CorruptCheckpointError
from weightsurgery.sources.checkpoint import Checkpoint, Origin, SourceKind
from weightsurgery.sources.frameworks._build import SourceTensor, build_checkpoint, numpy_dtype
from weightsurgery.sources.frameworks._lazy import require
from weightsurgery.sources.frameworks.keras_layers import KerasVar, Planned, layer_tensors, leaf_name, name_vars
from weightsurgery.sources.frameworks.keras_shapes import infer_shapes

__all__ = ["open_keras"]

_MODELS = ("Sequential", "Functional", "Model")
_SHAPELESS = ("Dropout", "Activation", "ActivityRegularization", "GaussianNoise", "GaussianDropout", "AlphaDropout")


def open_keras(path: Path, *, location: str) -> Checkpoint:
    """Open a ``.keras`` zip or a Keras ``.h5`` file lazily.

    Raises:
        MissingExtraError: ``h5py`` is not installed (``pip install weightsurgery[keras]``).
        CorruptCheckpointError: not a Keras file.

    Example:
        >>> import json, tempfile, h5py, numpy as np
        >>> path = Path(tempfile.mkdtemp()) / "dense.h5"   # the legacy layout Keras writes for model.save("x.h5")
        >>> with h5py.File(path, "w") as f:
        ...     f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": [
        ...         {"class_name": "Dense", "config": {"name": "fc", "units": 3}}]}})
        ...     g = f.create_group("model_weights/fc")
        ...     g.attrs["weight_names"] = ["fc/kernel:0"]
        ...     _ = g.create_dataset("fc/kernel:0", data=np.zeros((4, 3), np.float32))   # Dense: (in, out)
        >>> ckpt = open_keras(path, location=str(path))
        >>> ckpt.keys(), ckpt.metas["fc.weight"].shape, ckpt.metadata["layouts"]["fc.weight"]["layout"]
        (['fc.weight'], (3, 4), 'dense')
    """
    h5py = require("h5py", "keras", path)
    closers: list[Any] = []
    try:
        if zipfile.is_zipfile(path):
            zf = zipfile.ZipFile(path)
            closers.append(zf)
            names = zf.namelist()
            if "model.weights.h5" not in names:
                raise CorruptCheckpointError(
                    f"{path} is a zip without model.weights.h5, so not a .keras file (it holds {names[:5]})", source=path
                )
            config = json.loads(zf.read("config.json")) if "config.json" in names else None
            member = zf.open("model.weights.h5")
            closers.append(member)
            h5 = h5py.File(member, "r")
            closers.insert(0, h5)
            what = "config.json"
        else:
            h5 = h5py.File(path, "r")
            closers.append(h5)
            raw = h5.attrs.get("model_config")
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None
            what = "the model_config attribute"
        legacy = "model_weights" in h5 or "layer_names" in h5.attrs
        root = h5["model_weights"] if "model_weights" in h5 else h5
        if config is None:
            tensors = list(_no_config(root, legacy, path))
            order = "the HDF5 file's group order (no model config: no layer class is known)"
        else:
            layers = _config_layers(config, path)
            tensors = list(_legacy(root, layers, "") if legacy else _keras3(root, layers, ""))
            order = f"the layer order of {what}"
        details = {"format": "keras-legacy-h5" if legacy else "keras3",
                   "keras_version": _text(h5.attrs.get("keras_version")),
                   "model": (config or {}).get("class_name")}
    except (OSError, KeyError, ValueError) as exc:
        _close(closers)
        if isinstance(exc, CorruptCheckpointError):
            raise
        raise CorruptCheckpointError(f"{path} is not a readable Keras file ({exc})", source=path) from exc
    origin = Origin(SourceKind.KERAS, location, files=(str(path),), details=details)
    return build_checkpoint(tensors, origin, framework="keras", order=order, closer=lambda: _close(closers))


def _close(closers: Sequence[Any]) -> None:
    for c in closers:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _config_layers(config: Mapping[str, Any], path: Path) -> list[Mapping[str, Any]]:
    inner = config.get("config", config)
    layers = inner if isinstance(inner, list) else inner.get("layers")
    if not isinstance(layers, list):
        raise CorruptCheckpointError(f"{path}: the model config lists no layers", source=path)
    return layers


def _name(layer: Mapping[str, Any]) -> str:
    return str(layer.get("config", {}).get("name") or layer.get("name"))


def _inbound(layer: Mapping[str, Any]) -> list[str]:
    """Names of the layers feeding ``layer`` in a functional config (Keras 3 or 2 form)."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            history = node.get("config", {}).get("keras_history") if node.get("class_name") == "__keras_tensor__" else None
            if history:
                out.append(history[0])
                return
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
                out.append(node[0])  # Keras 2: [name, node_index, tensor_index, kwargs]
                return
            for v in node:
                walk(v)

    walk(layer.get("inbound_nodes", []))
    return out


def _feeding(layers: Sequence[Mapping[str, Any]], layer: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The one layer feeding ``layer``: its inbound layer, or the one before it in a Sequential config."""
    inbound = _inbound(layer)
    if inbound:
        return next((l for l in layers if _name(l) == inbound[0]), None) if len(inbound) == 1 else None
    index = list(layers).index(layer)
    return layers[index - 1] if index > 0 and "inbound_nodes" not in layer else None


def _flattened(layers: Sequence[Mapping[str, Any]], i: int, shapes: Mapping[str, tuple[int, ...]]
               ) -> Sequence[int] | str | None:
    """For a Dense at ``layers[i]``: the map shape a channels-last Flatten before it flattened, or why unknown."""
    prev = _feeding(layers, layers[i])
    while prev is not None and prev.get("class_name") in _SHAPELESS:
        prev = _feeding(layers, prev)
    if prev is None or prev.get("class_name") != "Flatten":
        return None
    cfg = prev.get("config", {})
    if cfg.get("data_format", "channels_last") == "channels_first":
        return None
    built = (prev.get("build_config") or {}).get("input_shape")
    before = _feeding(layers, prev)
    shape = list(built[1:]) if built and all(d is not None for d in built[1:]) else (
        list(shapes[_name(before)]) if before is not None and _name(before) in shapes else None)
    if shape is None:
        return (f"keras Dense {_name(layers[i])!r} reads a channels-last Flatten {_name(prev)!r} whose input shape "
                "neither the file stores nor its layers' configs fix, so the row order of its kernel cannot be decided")
    return shape if len(shape) > 1 else None


def _planned_tensors(prefix: str, layer: str, planned: Sequence[Planned], path: str) -> Iterator[SourceTensor]:
    for p in planned:
        yield SourceTensor(
            key=f"{prefix}{layer}.{p.leaf}",
            name=f"{path}/{p.var.name}",
            shape=tuple(p.shape if p.shape is not None else p.var.shape),
            dtype=numpy_dtype(p.var.dtype),
            read=p.read or p.var.read,
            layout=p.layout,
            reason=p.reason,
            epsilon=p.epsilon,
        )


def _dataset_var(name: str, ds: Any) -> KerasVar:
    return KerasVar(name, tuple(ds.shape), ds.dtype, lambda: ds[()])


def _keras3(group: Any, layers: Sequence[Mapping[str, Any]], prefix: str) -> Iterator[SourceTensor]:
    children = group["layers"] if "layers" in group else {}
    by_name: dict[str, Any] = {}
    for child in children.values():
        vars_ = child.get("vars")
        if vars_ is not None and "name" in vars_.attrs:
            by_name[_text(vars_.attrs["name"])] = child
    used: dict[str, int] = {}
    for i, layer in enumerate(layers):
        cls, name, cfg = layer.get("class_name"), _name(layer), layer.get("config", {})
        snake = _snake(str(cls))
        path = snake if snake not in used else f"{snake}_{used[snake] + 1}"
        used[snake] = used.get(snake, -1) + 1
        grp = by_name.get(name)
        if grp is None:
            grp = children.get(path) if hasattr(children, "get") else None
        if grp is None:
            continue
        if cls in _MODELS or "layers" in grp:
            yield from _keras3(grp, _config_layers(layer, Path(name)), f"{prefix}{name}.")
            continue
        holder = grp["cell"] if "cell" in grp else grp
        vars_ = holder.get("vars")
        datasets = [vars_[k] for k in sorted(vars_, key=int)] if vars_ is not None else []
        if not datasets:
            continue
        names = name_vars(str(cls), cfg, len(datasets))
        where = holder.name.lstrip("/")
        if names is None:
            reason = (f"keras {cls} {name!r}: {len(datasets)} saved variables, and the class does not say which is "
                      "which, so their layout is unknown")
            for k, ds in enumerate(datasets):
                yield SourceTensor(f"{prefix}{name}.vars.{k}", f"{where}/vars/{k}", tuple(ds.shape),
                                   numpy_dtype(ds.dtype), (lambda d=ds: d[()]), None, reason)
            continue
        variables = [_dataset_var(n, ds) for n, ds in zip(names, datasets)]
        flat = _flattened(layers, i, infer_shapes(layers, _inbound)) if cls == "Dense" else None
        yield from _planned_tensors(prefix, name, layer_tensors(str(cls), name, cfg, variables, flattened=flat),
                                    f"{where}/vars")


def _legacy(group: Any, layers: Sequence[Mapping[str, Any]], prefix: str) -> Iterator[SourceTensor]:
    for i, layer in enumerate(layers):
        cls, name, cfg = layer.get("class_name"), _name(layer), layer.get("config", {})
        if name not in group:
            continue
        grp = group[name]
        weight_names = [_text(w) for w in grp.attrs.get("weight_names", [])]
        if cls in _MODELS:
            yield from _legacy_nested(grp, weight_names, layer, f"{prefix}{name}.")
            continue
        yield from _legacy_layer(grp, weight_names, layers, i, prefix)


def _legacy_layer(grp: Any, weight_names: Sequence[str], layers: Sequence[Mapping[str, Any]], i: int,
                  prefix: str) -> Iterator[SourceTensor]:
    layer = layers[i]
    cls, name, cfg = str(layer.get("class_name")), _name(layer), layer.get("config", {})
    variables = [_dataset_var(leaf_name(w), grp[w]) for w in weight_names if w in grp]
    if not variables:
        return
    flat = _flattened(layers, i, infer_shapes(layers, _inbound)) if cls == "Dense" else None
    yield from _planned_tensors(prefix, name, layer_tensors(cls, name, cfg, variables, flattened=flat),
                                grp.name.lstrip("/"))


def _legacy_nested(grp: Any, weight_names: Sequence[str], model: Mapping[str, Any], prefix: str) -> Iterator[SourceTensor]:
    inner = _config_layers(model, Path(_name(model)))
    for i, layer in enumerate(inner):
        name = _name(layer)
        own = [w for w in weight_names if name in w.split("/")[:-1]]
        if own:
            yield from _legacy_layer(grp, own, inner, i, prefix)


def _no_config(root: Any, legacy: bool, path: Path) -> Iterator[SourceTensor]:
    reason = (f"{path} holds weights without a model config (model.save_weights), so no layer's class is known "
              "and no variable's layout can be decided; save the model with model.save('model.keras')")
    found: list[tuple[str, Any]] = []
    root.visititems(lambda n, o: found.append((n, o)) if hasattr(o, "shape") else None)
    for n, ds in found:
        key = n.replace("/vars/", ".").replace("/", ".").replace(":0", "")
        yield SourceTensor(key, n, tuple(ds.shape), numpy_dtype(ds.dtype), (lambda d=ds: d[()]), None, reason)


def _snake(name: str) -> str:
    """Keras's own ``to_snake_case`` (how Keras 3 names a layer's group in the weights file)."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
