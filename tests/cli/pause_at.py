"""Run the real ``weightsurgery`` command line, stopped at one moment until the test moves on.

``python pause_at.py ARGS...`` runs ``weightsurgery ARGS...`` in this process.
It installs an audit hook: right after the temporary file of an output is
created (the ``weightsurgery.tempfile`` audit event, or ``tempfile.mkstemp``
for code that uses it), the process writes ``ready.<pid>`` (holding the
temporary file's path) into ``$PAUSE_DIR`` and waits until ``$PAUSE_DIR/go``
exists. Meanwhile the test does what another process or the user would do at
that moment: create the output file, start a rival run, press Ctrl-C (SIGINT)
or SIGKILL the process. ``$PAUSE_NTH`` (default 1) picks which temporary file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

EVENTS = {"weightsurgery.tempfile", "tempfile.mkstemp"}
WAIT_LIMIT_S = 600  # a test that never says go must not leave this process behind forever

_seen = 0
_pausing = False


def _hook(event: str, args: tuple) -> None:
    global _seen, _pausing
    if event not in EVENTS or _pausing:
        return
    _seen += 1
    if _seen != int(os.environ.get("PAUSE_NTH", "1")):
        return
    _pausing = True
    folder = Path(os.environ["PAUSE_DIR"])
    note = folder / f"writing.{os.getpid()}"
    note.write_text(str(args[0]))
    note.rename(folder / f"ready.{os.getpid()}")  # the test never reads a half-written note
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            os._exit(99)
        time.sleep(0.01)
    _pausing = False


if __name__ == "__main__":
    sys.addaudithook(_hook)
    from weightsurgery.cli.main import main

    sys.exit(main(sys.argv[1:]))
