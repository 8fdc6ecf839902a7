"""Weights saved by other frameworks, read into the same lazy :class:`Checkpoint` in PyTorch's layout.

=======================  ===========================  =======================  =====================
file                     reader                       library (extra)          keys, in the order of
=======================  ===========================  =======================  =====================
``.keras``, ``.h5``      :mod:`.keras`                ``h5py`` (``keras``)      the config's layers
``.onnx``                :mod:`.onnx`                 ``onnx`` (``onnx``)       the graph's nodes
``.msgpack``, ``.npz``   :mod:`.flax`                 ``msgpack`` (``flax``)    the file's entries
``.gguf``                :mod:`.gguf`                 ``gguf`` (``gguf``)       the file's tensors
=======================  ===========================  =======================  =====================

Each reader decides every tensor's layout from what the file says (the layer
class, the ONNX node that reads it, the Flax module name, the GGUF
architecture) and records it per key in ``metadata["layouts"]``; a tensor whose
layout the file does not decide is listed in ``metadata["undecided"]`` with the
reason, and the planner never copies it. TensorFlow checkpoints, SavedModels
and Orbax folders are refused with :class:`~weightsurgery.errors.UnsupportedFormatError`,
which says how to convert them.
"""

from __future__ import annotations

from pathlib import Path

from weightsurgery.errors import UnsupportedFormatError
from weightsurgery.sources.checkpoint import Checkpoint

__all__ = ["FRAMEWORK_SUFFIXES", "check_folder", "open_framework"]

#: File suffixes read by a framework reader.
FRAMEWORK_SUFFIXES: tuple[str, ...] = (".keras", ".h5", ".hdf5", ".onnx", ".msgpack", ".npz", ".gguf")

_TF_SUFFIXES = (".pb", ".index", ".tflite")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TF_HOWTO = (
    "weightsurgery reads no TensorFlow format, as that needs TensorFlow itself: load it in TensorFlow and save "
    "the Keras model with model.save('model.keras'), or convert it to ONNX with tf2onnx "
    "(python -m tf2onnx.convert --saved-model DIR --output model.onnx), then pass that file"
)


def open_framework(path: Path, *, location: str) -> Checkpoint | None:
    """Open ``path`` with the framework reader its suffix or first bytes name, or ``None`` if none does.

    Raises:
        UnsupportedFormatError: a TensorFlow checkpoint, graph or TFLite file.
        MissingExtraError: the reader's library is not installed.

    Example:
        >>> open_framework(Path("weights.pth"), location="weights.pth") is None
        True
    """
    suffix = path.suffix.lower()
    name = path.name.lower()
    if suffix in _TF_SUFFIXES or ".data-" in name and "-of-" in name:
        raise UnsupportedFormatError(f"{path} is a TensorFlow file; {_TF_HOWTO}", source=path)
    head = _head(path)
    if suffix in (".keras", ".h5", ".hdf5") or head.startswith(_HDF5_MAGIC):
        from weightsurgery.sources.frameworks.keras import open_keras

        return open_keras(path, location=location)
    if suffix == ".onnx":
        from weightsurgery.sources.frameworks.onnx import open_onnx

        return open_onnx(path, location=location)
    if suffix == ".gguf" or head.startswith(b"GGUF"):
        from weightsurgery.sources.frameworks.gguf import open_gguf

        return open_gguf(path, location=location)
    if suffix in (".msgpack", ".npz"):
        from weightsurgery.sources.frameworks.flax import open_flax

        return open_flax(path, location=location)
    return None


def check_folder(folder: Path) -> None:
    """Refuse a TensorFlow SavedModel, TF checkpoint or Orbax folder with how to convert it.

    Example:
        >>> import tempfile
        >>> check_folder(Path(tempfile.mkdtemp()))   # an ordinary folder: nothing to say
    """
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if "saved_model.pb" in names or "saved_model.pbtxt" in names:
        raise UnsupportedFormatError(f"{folder} is a TensorFlow SavedModel; {_TF_HOWTO}", source=folder)
    if "checkpoint" in names and any(n.endswith(".index") for n in names):
        raise UnsupportedFormatError(f"{folder} holds a TensorFlow checkpoint; {_TF_HOWTO}", source=folder)
    if names & {"_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt"}:
        raise UnsupportedFormatError(
            f"{folder} is an Orbax checkpoint, which needs orbax-checkpoint and tensorstore to read; restore it "
            "with orbax (ocp.StandardCheckpointer().restore(path)) and save the params with "
            "flax.serialization.to_bytes (.msgpack) or numpy.savez (.npz), then pass that file",
            source=folder,
        )


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError:
        return b""
