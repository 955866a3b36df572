"""Where the tests are, for subprocesses that import ``support`` modules by name."""

from __future__ import annotations

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
"""The tests folder: ``support`` is a package in it."""
ROOT = TESTS.parent
"""The project's root (docs, scripts)."""


def subprocess_pythonpath() -> str:
    """``PYTHONPATH`` for a subprocess that imports ``support.…``: the tests folder, then this
    process's ``PYTHONPATH``."""
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
