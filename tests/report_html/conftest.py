"""The HTML report's tests import their helpers (html_models, browser) from this folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from html_models import every_status_report  # noqa: E402

from weightsurgery import Report  # noqa: E402


@pytest.fixture(scope="module")
def report() -> Report:
    return every_status_report()
