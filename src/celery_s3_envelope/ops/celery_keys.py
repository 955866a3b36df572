"""Celery's result key prefixes: what marks an object under a base path as a Celery result.

``migrate`` seals only such keys, ``scan`` counts them as plaintext findings, and ``shards``
splits the key space by them.
"""

from __future__ import annotations

CELERY_KEY_PREFIXES = ("celery-task-meta-", "celery-taskset-meta-", "chord-unlock-")


def celery_prefixes(global_keyprefix: str = "") -> tuple[str, ...]:
    """Celery's key prefixes with ``global_keyprefix`` applied as Celery applies it."""
    if global_keyprefix and global_keyprefix[-1] not in ":_-.":
        global_keyprefix += "_"
    return tuple(global_keyprefix + prefix for prefix in CELERY_KEY_PREFIXES)


def is_celery_result_key(key: str) -> bool:
    """True when the key's last part holds one of Celery's result key prefixes (after any
    ``global_keyprefix``): the only objects ``migrate`` may seal."""
    name = key.rsplit("/", 1)[-1]
    return any(prefix in name for prefix in CELERY_KEY_PREFIXES)
