"""Set-up for the distributed tests: a versioned bucket (its versions count the PUTs), envelopes
spread over Celery's three key prefixes plus objects of unknown shape, and the worker's pool."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import celery_s3_envelope as cse
from celery_s3_envelope.shards import CELERY_PREFIXES
from celery_s3_envelope.store import S3Store
from celery_s3_envelope.sweep import is_run_state

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

BASE = "e2e/results/"  # the worker app's s3_base_path (e2e_worker.worker_config)
UNKNOWN_PLACES = ("aaa/", "celery-x-", "chord-", "zzz/")


def value(i: int, version: str = "v1") -> str:
    return f'{{"status": "SUCCESS", "result": {{"n": {i}, "version": "{version}"}}}}'


def layout(count: int, unknown: int) -> tuple[list[str], list[str]]:
    """Envelope keys round-robin over the three prefixes, and unknown keys in the gaps."""
    envelopes = [f"{BASE}{CELERY_PREFIXES[i % 3]}{uuid.uuid4()}" for i in range(count)]
    others = [f"{BASE}{UNKNOWN_PLACES[i % 4]}{i}" for i in range(unknown)]
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


def put_counts(client: S3Client, bucket: str) -> Counter[str]:
    """Versions per key (a PUT each), the run's own state documents left out."""
    counts: Counter[str] = Counter()
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", ()):
            if not is_run_state(version["Key"], BASE):
                counts[version["Key"]] += 1
    return counts


@contextmanager
def versioned_bucket(client: S3Client, *, versioned: bool = True) -> Iterator[str]:
    """A bucket whose versions count the PUTs, on a real server (on moto the ``server_puts``
    fixture counts them: moto's versioned store does not scale to 10⁴ objects)."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    try:
        yield name
    finally:
        while True:  # the first page again each time: deleting shifts the pages
            page = client.list_object_versions(Bucket=name)
            items = [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]
            if not items:
                break
            objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in items]
            client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
        client.delete_bucket(Bucket=name)


def pool_children(pid: int) -> list[int]:
    """The worker's pool processes (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []
