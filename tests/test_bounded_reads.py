"""Reads are bounded before the body: an object or file larger than any envelope of a value up to
``envelope_max_size`` (that plus the largest header and the tag) is refused with
``SizeLimitExceeded`` before it is read, so a bucket writer cannot make ``get``, ``rotate``,
cleanup or ``decode`` allocate without bound (docs/security.md)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.response import StreamingBody
from celery import states
from click.testing import CliRunner

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.pipeline import DEFAULT_MAX_SIZE, largest_envelope
from celery_s3_envelope.store import S3Store
from support.apps import MakeApp, backend_of
from support.s3 import S3Endpoint

MiB = 1024 * 1024
LIMIT = 1 * MiB


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The peak of Python allocations inside the block, in bytes (``[peak]`` once it ends)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


@pytest.fixture
def body_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every chunk read from an S3 response body."""
    reads: list[int] = []
    original = StreamingBody.read

    def read(self: StreamingBody, amt: int | None = None) -> bytes:
        chunk: bytes = original(self, amt)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(StreamingBody, "read", read)
    return reads


def assert_bounded(endpoint: S3Endpoint, peak: list[int], reads: list[int]) -> None:
    """Nothing past the bound came off the wire, and (with the server in another process, so
    that only the client is measured) the peak stayed under twice the limit."""
    assert sum(reads) <= largest_envelope(LIMIT) + 1, sum(reads)
    if endpoint.server != "moto":  # moto serves from this very process: its own copy counts
        assert peak[0] < 2 * LIMIT, peak


@pytest.fixture
def oversized(store: S3Store) -> str:
    """A 48 MiB object where values are limited to 1 MiB."""
    key = "results/celery-task-meta-oversized"
    store.put(key, b"\x00" * (48 * MiB))
    return key


def test_the_store_refuses_an_object_past_its_bound_unread(
    s3_endpoint: S3Endpoint, bucket: str, oversized: str, body_reads: list[int]
) -> None:
    bounded = s3_endpoint.store(bucket)
    bounded.max_object_size = largest_envelope(LIMIT)
    _ = bounded.client  # built first: a client's service model is megabytes of its own
    with peak_memory() as peak, pytest.raises(cse.SizeLimitExceeded, match="refused unread"):
        bounded.get(oversized)
    assert_bounded(s3_endpoint, peak, body_reads)
    assert len(s3_endpoint.store(bucket).get(oversized) or b"") == 48 * MiB  # it is there
    assert sum(body_reads) >= 48 * MiB  # and the count sees a whole read when one happens


def test_backend_get_refuses_it_before_reading(
    make_app: MakeApp, s3_endpoint: S3Endpoint, oversized: str, body_reads: list[int]
) -> None:
    backend = backend_of(make_app(s3_base_path="results/", envelope_max_size=LIMIT))
    assert backend.store.max_object_size == largest_envelope(LIMIT)
    _ = backend.store.client  # built first: a client's service model is megabytes of its own
    with peak_memory() as peak, pytest.raises(cse.SizeLimitExceeded):
        backend.get("celery-task-meta-oversized")
    assert_bounded(s3_endpoint, peak, body_reads)


def test_a_rotation_counts_it_failed_and_goes_on(
    store: S3Store, keyring: cse.Keyring, both: cse.Keyring, oversized: str
) -> None:
    ordinary = "results/celery-task-meta-ordinary"
    store.put(ordinary, cse.seal("value", key=ordinary, keyring=keyring))
    store.max_object_size = largest_envelope(LIMIT)
    report = Rotation(store, both, prefix="results/", workers=2).run()
    assert report.counts["rewrapped"] == 1 and report.counts["failed"] == 1
    ((key, reason),) = report.failures
    assert key == oversized and "SizeLimitExceeded" in reason


def test_cleanup_keeps_it_and_expires_the_rest(make_app: MakeApp, store: S3Store) -> None:
    """Between the two expiries cleanup reads each result's state: the oversized one is kept
    (logged), the others are decided as usual."""
    app = make_app(
        s3_base_path="results/",
        envelope_max_size=LIMIT,
        result_expires=3600,
        result_failure_expires=10 * 3600,
    )
    backend = backend_of(app)
    backend.store_result("ok", "fine", states.SUCCESS)
    backend.store_result("bad", ValueError("broken"), states.FAILURE)
    store.put("results/celery-task-meta-oversized", b"\x00" * (8 * MiB))
    backend.cleanup(now=datetime.now(UTC) + timedelta(hours=2))
    left = {info.key.rsplit("-", 1)[-1] for info in store.list("results/")}
    assert left == {"bad", "oversized"}


def test_decode_refuses_a_sparse_gigabyte_file_unread(tmp_path: Path, keyring_file: Path) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as handle:
        handle.truncate(1024 * MiB)  # sparse: a gigabyte on paper, nothing on disk
    limit = largest_envelope(DEFAULT_MAX_SIZE)
    with peak_memory() as peak:
        result = CliRunner().invoke(envelope, ["decode", str(huge), "--keyring", str(keyring_file)])
    assert result.exit_code == 1
    assert "refused, too large" in result.stderr
    assert peak[0] < 2 * limit and peak[0] < 16 * MiB, peak  # nothing like the file was read
    with peak_memory() as peak:
        inspected = CliRunner().invoke(envelope, ["inspect", str(huge)])
    assert inspected.exit_code == 3 and "not an envelope" in inspected.stderr
    assert peak[0] < 2 * MiB, peak  # inspect reads the header's worth only


def test_a_file_within_the_bound_still_decodes(
    tmp_path: Path, keyring: cse.Keyring, keyring_file: Path
) -> None:
    path = tmp_path / "ok.bin"
    path.write_bytes(cse.seal("ok", key="k", keyring=keyring))
    result = CliRunner().invoke(envelope, ["decode", str(path), "--keyring", str(keyring_file)])
    assert result.exit_code == 0 and result.stdout == "ok\n"
