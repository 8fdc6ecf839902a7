"""Framework files for the reader tests, made by the real frameworks once per session.

Keras runs on its JAX backend on the CPU. Importing Keras, JAX and Flax is slow,
so each is imported once, by a session fixture, and every test shares its files.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def keras() -> Any:
    import keras

    assert keras.backend.backend() == "jax", "the tests run Keras on its JAX backend (KERAS_BACKEND=jax)"
    return keras


@pytest.fixture(scope="session")
def framework_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("frameworks")
