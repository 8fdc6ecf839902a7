"""Formats no reader takes are refused with how to convert them; a missing library names its extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from weightsurgery.errors import UnsupportedFormatError
from weightsurgery.sources import resolve


@pytest.mark.parametrize("name", ["model.ckpt.index", "model.ckpt.data-00000-of-00001", "frozen.pb", "m.tflite"])
def test_tensorflow_files_are_refused_with_how_to_convert(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x08\x01")
    with pytest.raises(UnsupportedFormatError, match=r"TensorFlow file; .*model\.save\('model\.keras'\).*tf2onnx"):
        resolve(path)


@pytest.mark.parametrize("marker, what", [("saved_model.pb", "SavedModel"), ("_CHECKPOINT_METADATA", "Orbax")])
def test_tensorflow_and_orbax_folders_are_refused(tmp_path: Path, marker: str, what: str) -> None:
    (tmp_path / marker).write_bytes(b"{}")
    with pytest.raises(UnsupportedFormatError, match=what):
        resolve(tmp_path)


def test_a_missing_reader_library_names_the_extra(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: never read, h5py is missing first
    code = (
        "import sys; sys.modules['h5py'] = None\n"  # the import of h5py fails, as where it is not installed
        "from weightsurgery.errors import MissingExtraError\n"
        "from weightsurgery.sources import resolve\n"
        f"try:\n    resolve({str(path)!r})\nexcept MissingExtraError as e:\n    print(e.extra, '|', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3]).stdout
    assert out.startswith("keras | reading ") and "pip install 'weightsurgery[keras]'" in out
