"""`import weightsurgery` stays light: every CLI call and script pays for what it imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("timm", "torchvision", "huggingface_hub", "transformers", "peft", "rich", "yaml")


def test_import_weightsurgery_pulls_in_no_optional_library() -> None:
    code = f"import sys, json, weightsurgery; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
