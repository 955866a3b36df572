"""Chords without polling: ``incr`` by S3 conditional writes hands out every value exactly once."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from celery_s3_envelope import Keyring, inspect, unseal
from celery_s3_envelope.backend import EnvelopeS3Backend
from support.faults import faults
from support.s3 import count_requests, missing_bucket_name


def test_incr_counts_in_a_sealed_object(
    backend: EnvelopeS3Backend, keyring: Keyring, s3_client: Any, bucket: str
) -> None:
    key = backend.get_key_for_chord("group-1")
    assert [backend.incr(key) for _ in range(3)] == [1, 2, 3]
    body = s3_client.get_object(Bucket=bucket, Key="chord-unlock-group-1")["Body"].read()
    assert inspect(body).key == "chord-unlock-group-1"
    assert json.loads(unseal(body, keyring=keyring, key="chord-unlock-group-1"))["n"] == 3
    assert backend.implements_incr and backend.apply_chord == backend._apply_chord_incr


def test_concurrent_incr_hands_out_each_value_once(backend: EnvelopeS3Backend) -> None:
    key = backend.get_key_for_chord("contended")

    def bump(_: int) -> int:
        return backend.incr(key)

    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(bump, range(48)))
    assert sorted(values) == list(range(1, 49))


def test_incr_retries_after_losing_a_race(
    backend: EnvelopeS3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = backend.get_key_for_chord("raced")
    backend.incr(key)
    store = backend.store
    real_put = store.put
    interfered: list[bool] = []

    def put_after_a_rival(object_key: str, body: bytes, **kwargs: Any) -> str:
        if not interfered:  # another worker's increment lands between our read and our write
            interfered.append(True)
            rival = EnvelopeS3Backend(app=backend.app)
            assert rival.incr(key) == 2
        return real_put(object_key, body, **kwargs)

    monkeypatch.setattr(store, "put", put_after_a_rival)
    with count_requests(store.client) as requests:
        assert backend.incr(key) == 3
    # refused If-Match, a HEAD showing the counter did change (a lost race, not a server that
    # ignores the condition: test_conditional_writes.py), then again
    assert requests.methods == ["GET", "PUT", "HEAD", "GET", "PUT"]


def test_incr_propagates_other_errors(backend: EnvelopeS3Backend) -> None:
    backend.store.bucket = missing_bucket_name()
    with pytest.raises(ClientError, match="NoSuchBucket"):
        backend.incr(backend.get_key_for_chord("g"))


def test_expire_is_left_to_cleanup(backend: EnvelopeS3Backend) -> None:
    key = backend.get_key_for_chord("g")
    backend.incr(key)
    with count_requests(backend.store.client) as requests:
        backend.expire(key, 10)
    assert len(requests) == 0
    assert json.loads(backend.get(key))["n"] == 1  # still there: expiry is cleanup()'s job


def test_incr_counts_once_when_responses_are_lost(backend: EnvelopeS3Backend) -> None:
    """A write the server applied but whose response never arrived (timeout, reset, 5xx, or
    botocore's retry of it meeting our own write as a 412) is recognised, not counted twice."""
    key = backend.get_key_for_chord("lossy")
    with faults(backend.store.client, rate=0.3, seed=5) as injector:
        values = [backend.incr(key) for _ in range(60)]
    assert injector.injected["timeout-after"] + injector.injected["reset-after"] > 5
    assert values == list(range(1, 61))


def test_incr_reads_a_counter_written_by_an_older_release(
    backend: EnvelopeS3Backend, keyring: Keyring
) -> None:
    key = backend.get_key_for_chord("legacy")
    object_key = key.decode() if isinstance(key, bytes) else key
    backend.store.put(object_key, backend._seal(object_key, "7"))
    assert backend.incr(key) == 8
