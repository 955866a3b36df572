"""Chords without polling: ``incr`` by S3 conditional writes hands out every value exactly once."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from celery import states
from celery.app.task import Context

from celery_s3_envelope import Keyring, inspect, unseal
from celery_s3_envelope.backend import EnvelopeS3Backend
from support.apps import MakeApp, backend_of
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


def test_the_last_chord_part_sends_the_callback_and_removes_the_chord_state(
    make_app: MakeApp,
) -> None:
    """Celery's own ``on_chord_part_return``, as a worker runs it after each header task, on the
    installed Celery (``make test-compat``): the last part joins the header, sends the callback,
    and deletes the saved group and the counter (Celery 5.3 through ``backend.client.delete``)."""
    app = make_app(broker_url="memory://")
    backend = backend_of(app)
    callback = app.signature("tests.collect").freeze()
    parts = [app.AsyncResult(f"part-{n}") for n in range(3)]
    backend.apply_chord(("group-1", parts), callback)
    for n, part in enumerate(parts):
        backend.store_result(part.id, n * 10, states.SUCCESS)
        request = Context(id=part.id, group="group-1", chord=dict(app.signature("tests.collect",
                          options={"task_id": callback.id}, chord_size=3)))  # fmt: skip
        backend.on_chord_part_return(request, states.SUCCESS, n * 10)
    assert app.AsyncResult(callback.id).state == states.PENDING  # not failed with a ChordError
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("celery")
        sent = queue.get(timeout=5)
        sent.ack()
        queue.close()
    assert sent.headers["id"] == callback.id
    assert sent.payload[0] == [[0, 10, 20]]  # the header's results, in order
    assert {info.key for info in backend.store.list()} == {
        f"celery-task-meta-part-{n}" for n in range(3)
    }
