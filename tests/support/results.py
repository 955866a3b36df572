"""The Celery results the rotation tests seal and rewrite."""

from __future__ import annotations


def value(i: int, version: str = "v1") -> str:
    """Result ``i`` as stored (JSON): ``version`` tells a rewrite from the original."""
    return f'{{"status": "SUCCESS", "result": {{"n": {i}, "version": "{version}"}}}}'
