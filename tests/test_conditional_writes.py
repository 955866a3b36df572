"""A server that refuses a conditional write whose condition held (Ceph RGW 16 on a versioned
bucket checks If-Match against the version being written, so it always answers 412) must never
pass for a run where every object "raced": rotate and migrate report each such object failed,
with the reason, and the chord counter says so at once instead of retrying until it gives up.

The refusal is injected (412 on PutObject, the server never reached), so these run the same on
moto and on a real server; the versioned-bucket test shows what the real server does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

import celery_s3_envelope as cse
from celery_s3_envelope.backend import INCR_MAX_ATTEMPTS, EnvelopeS3Backend
from celery_s3_envelope.ops.migrate import Migration
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.store import NOT_HONOURED, S3Store
from support.s3 import S3Endpoint, fresh_bucket, server_answers

PREFIX = "results/"

SWITCHED = datetime.now(UTC) + timedelta(days=1)
"""migrate's cutoff: the deployment switched after every stock result these tests write."""


def sealed(store: S3Store, keyring: cse.Keyring, count: int) -> list[str]:
    keys = [f"{PREFIX}celery-task-meta-{i}" for i in range(count)]
    for key in keys:
        store.put(key, cse.seal(f"value {key}", key=key, keyring=keyring))
    return keys


def test_rotation_reports_a_refused_unchanged_object_as_failed_not_changed(
    store: S3Store, keyring: cse.Keyring, both: cse.Keyring
) -> None:
    keys = sealed(store, keyring, 3)
    before = {key: store.get(key) for key in keys}
    with server_answers(store.client, "PutObject", 412, "PreconditionFailed"):
        report = Rotation(store, both, prefix=PREFIX, workers=2).run()
    assert not report.ok
    assert report.counts["failed"] == 3 and report.counts["changed"] == 0
    assert {reason for _, reason in report.failures} == {NOT_HONOURED}
    assert {key: store.get(key) for key in keys} == before


def test_rotation_still_counts_a_real_race_as_changed(
    store: S3Store, keyring: cse.Keyring, both: cse.Keyring
) -> None:
    (key,) = sealed(store, keyring, 1)
    read = store.fetch(key)
    assert read is not None
    store.put(key, cse.seal("newer", key=key, keyring=both))  # a worker, between read and write
    from celery_s3_envelope.ops.rewrite import refused_write

    with pytest.raises(ClientError) as refused:
        store.put(key, b"stale", if_match=read.etag)
    result = refused_write(store, key, read, refused.value, "k1")
    assert result.outcome.value == "changed"
    assert cse.unseal(store.get(key) or b"", keyring=both, key=key) == "newer"


def test_migrate_reports_a_refused_unchanged_object_as_failed(
    store: S3Store, keyring: cse.Keyring
) -> None:
    key = f"{PREFIX}celery-task-meta-stock"
    store.put(key, b'{"status": "SUCCESS", "result": 1}')
    with server_answers(store.client, "PutObject", 412, "PreconditionFailed"):
        report = Migration(store, keyring, cutoff=SWITCHED, prefix=PREFIX, workers=1).run()
    assert report.failures == [(key, NOT_HONOURED)] and report.counts["changed"] == 0
    assert store.get(key) == b'{"status": "SUCCESS", "result": 1}'


def test_chord_counter_says_at_once_that_the_server_ignores_the_condition(
    backend: EnvelopeS3Backend,
) -> None:
    assert backend.incr("chord-unlock-x") == 1
    started = time.monotonic()
    with (
        server_answers(backend.store.client, "PutObject", 412, "PreconditionFailed"),
        pytest.raises(ClientError) as caught,
    ):
        backend.incr("chord-unlock-x")
    assert caught.value.response["Error"]["Code"] == "ConditionalWriteNotHonoured"
    assert NOT_HONOURED in str(caught.value)
    assert not backend.exception_safe_to_retry(caught.value)
    # Not after INCR_MAX_ATTEMPTS backed-off retries: the first refusal decides.
    assert time.monotonic() - started < 5, INCR_MAX_ATTEMPTS
    assert backend.incr("chord-unlock-x") == 2


@pytest.fixture
def versioned_store(s3_endpoint: S3Endpoint) -> Iterator[S3Store]:
    with fresh_bucket(s3_endpoint.client(), versioned=True) as name:
        yield s3_endpoint.store(name)


def test_rotation_on_a_versioned_bucket_rewraps_or_says_why_it_cannot(
    versioned_store: S3Store, keyring: cse.Keyring, both: cse.Keyring
) -> None:
    """moto and AWS honour If-Match on versioned buckets; Ceph RGW 16 does not. Either way the
    report is true: every object rewrapped, or every one failed with the reason; none 'changed'."""
    keys = sealed(versioned_store, keyring, 5)
    report = Rotation(versioned_store, both, prefix=PREFIX, workers=2).run()
    assert report.counts["changed"] == 0
    if report.ok:
        assert report.counts["rewrapped"] == 5
        assert {cse.inspect(versioned_store.get(k) or b"").kek_id for k in keys} == {"k2"}
    else:
        assert report.failures == [(key, NOT_HONOURED) for key in keys]
        assert {cse.inspect(versioned_store.get(k) or b"").kek_id for k in keys} == {"k1"}
