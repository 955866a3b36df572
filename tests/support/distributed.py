"""Set-up for the distributed tests: envelopes spread over Celery's three key prefixes plus
objects of unknown shape, the workers' PUTs counted, and the worker's pool."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import celery_s3_envelope as cse
from celery_s3_envelope.ops.celery_keys import CELERY_KEY_PREFIXES
from celery_s3_envelope.store import S3Store
from support.results import value
from support.worker import BASE_PATH

UNKNOWN_PLACES = ("aaa/", "celery-x-", "chord-", "zzz/")


def layout(count: int, unknown: int) -> tuple[list[str], list[str]]:
    """Envelope keys round-robin over the three prefixes, and unknown keys in the gaps."""
    envelopes = [f"{BASE_PATH}{CELERY_KEY_PREFIXES[i % 3]}{uuid.uuid4()}" for i in range(count)]
    others = [f"{BASE_PATH}{UNKNOWN_PLACES[i % 4]}{i}" for i in range(unknown)]
    return envelopes, others


def fill(
    stores: list[S3Store], keyring: cse.Keyring, envelopes: list[str], others: list[str]
) -> None:
    """The same bytes in every store (identical buckets)."""
    numbers = {key: i for i, key in enumerate(envelopes)}

    def put(key: str) -> None:
        if key in numbers:
            data = cse.seal(value(numbers[key]), key=key, keyring=keyring)
        else:
            data = os.urandom(40)
        for store in stores:
            store.put(key, data)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, envelopes + others))


def worker_puts(log: Path, bucket: str, keys: list[str]) -> Counter[str]:
    """PUTs the workers made to ``keys`` of ``bucket`` (``support.e2e_app.PUT_LOG_VARIABLE``)."""
    lines = Counter(log.read_text(encoding="utf-8").splitlines()) if log.exists() else Counter()
    return Counter({key: lines[f"{bucket}/{key}"] for key in keys})


def pool_children(pid: int) -> list[int]:
    """The worker's pool processes (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []
