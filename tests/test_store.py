"""``S3Store``: the S3 I/O the backend and the tools build on, against a real HTTP server."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError

from celery_s3_envelope import Keyring, inspect, seal
from celery_s3_envelope.envelope import PREAMBLE_SIZE, header_length
from celery_s3_envelope.store import S3Store, is_transient, is_write_conflict
from support.s3 import S3Endpoint, count_requests, missing_bucket_name, server_answers


def test_get_is_one_request_and_missing_is_none(store: S3Store) -> None:
    store.put("a/key", b"body")
    with count_requests(store.client) as requests:
        assert store.get("a/key") == b"body"
        assert store.get("a/other") is None
    assert requests.methods == ["GET", "GET"]


def test_put_returns_the_etag_that_get_with_etag_reads(store: S3Store) -> None:
    etag = store.put("k", b"one")
    assert store.get_with_etag("k") == (b"one", etag)
    assert store.get_with_etag("absent") is None


def test_if_match_writes_only_over_that_etag(store: S3Store) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two", if_match=first)
    with pytest.raises(ClientError) as refused:
        store.put("k", b"three", if_match=first)
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert is_write_conflict(refused.value)
    assert store.get_with_etag("k") == (b"two", second)


def test_if_match_goes_out_unquoted(store: S3Store) -> None:
    """Ceph RGW 16 never matches a quoted If-Match (docs/compatibility.md); moto matches both,
    so only the header on the wire shows the difference here."""
    etag = store.put("k", b"one")
    assert etag.startswith('"')  # S3 hands ETags out quoted
    sent: list[str] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(request.headers["If-Match"].decode())

    store.client.meta.events.register("before-send.s3.PutObject", record)
    try:
        store.put("k", b"two", if_match=etag)
    finally:
        store.client.meta.events.unregister("before-send.s3.PutObject", record)
    assert sent == [etag.strip('"')]


def test_if_none_match_creates_only(store: S3Store) -> None:
    store.put("k", b"one", if_none_match=True)
    with pytest.raises(ClientError) as refused:
        store.put("k", b"two", if_none_match=True)
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert store.get("k") == b"one"
    with pytest.raises(ValueError, match="exclude"):
        store.put("k", b"x", if_match="etag", if_none_match=True)


def test_ranged_get_reads_an_envelope_header_only(store: S3Store, keyring: Keyring) -> None:
    envelope = seal("x" * 5000, key="results/k", keyring=keyring)
    store.put("results/k", envelope)
    size = header_length(store.get_range("results/k", 0, PREAMBLE_SIZE - 1) or b"")
    head = store.get_range("results/k", 0, size - 1)
    assert head == envelope[:size]
    assert inspect(head).key == "results/k"
    assert store.get_range("absent", 0, 10) is None


def test_delete_and_deleting_an_absent_key(store: S3Store) -> None:
    store.put("k", b"v")
    with count_requests(store.client) as requests:
        store.delete("k")
        store.delete("k")
    assert requests.methods == ["DELETE", "DELETE"]
    assert store.get("k") is None


def test_delete_many_sends_at_most_1000_keys_a_request(store: S3Store) -> None:
    real = [f"real/{n}" for n in range(3)]
    for key in real:
        store.put(key, b"v")
    store.put("kept", b"v")
    keys = real + [f"absent/{n:04}" for n in range(1998)]
    batches: list[int] = []

    def record(request: Any, **_: Any) -> None:
        batches.append(request.body.count(b"<Key>"))

    store.client.meta.events.register("before-send.s3.DeleteObjects", record)
    assert store.delete_many(iter(keys)) == 2001
    assert batches == [1000, 1000, 1]
    assert [info.key for info in store.list()] == ["kept"]
    assert store.delete_many([]) == 0


def test_list_pages_lazily_in_key_order(store: S3Store) -> None:
    keys = [f"p/{n:02}" for n in range(25)]
    for key in keys:
        store.put(key, key.encode())
    store.put("q/outside", b"v")
    with count_requests(store.client) as requests:
        listing = store.list("p/", page_size=10)
        first = next(listing)
        assert len(requests) == 1  # one page fetched, not the whole listing
        rest = list(listing)
    assert len(requests) == 3
    assert [first.key] + [info.key for info in rest] == keys
    assert first.size == 4 and first.etag == store.get_with_etag("p/00")[1]  # type: ignore[index]
    assert first.last_modified.tzinfo is not None
    assert [info.key for info in store.list("p/", start_after="p/22")] == ["p/23", "p/24"]


def test_get_many_is_concurrent_and_bounded(s3_endpoint: S3Endpoint, bucket: str) -> None:
    store = s3_endpoint.store(bucket, mget_concurrency=4)
    present = {f"k{n}": f"v{n}".encode() for n in range(20)}
    for key, value in present.items():
        store.put(key, value)
    threads: set[int] = set()
    store.client.meta.events.register(
        "before-send.s3.GetObject", lambda **_: threads.add(threading.get_ident())
    )
    found = store.get_many([*present, "missing", "k0"])
    assert found == {**present, "missing": None}
    assert 1 < len(threads) <= 4


def test_errors_propagate_unchanged(s3_endpoint: S3Endpoint, store: S3Store) -> None:
    with server_answers(store.client, "GetObject", 403, "AccessDenied"):
        with pytest.raises(ClientError) as denied:
            store.get("k")
        with pytest.raises(ClientError):
            store.get_many(["a", "b", "c"])
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    missing = s3_endpoint.store(missing_bucket_name())
    with pytest.raises(ClientError, match="NoSuchBucket"):
        missing.get("k")


def test_put_extra_args_and_tags_reach_the_object(
    s3_endpoint: S3Endpoint, bucket: str, s3_client: Any
) -> None:
    store = s3_endpoint.store(
        bucket, put_extra_args={"Metadata": {"owner": "team-a"}, "ContentType": "text/x-test"}
    )
    store.put("k", b"v", tags={"celery-expiry-class": "failure"})
    head = s3_client.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == {"owner": "team-a"}
    assert head["ContentType"] == "text/x-test"
    tags = s3_client.get_object_tagging(Bucket=bucket, Key="k")["TagSet"]
    assert tags == [{"Key": "celery-expiry-class", "Value": "failure"}]


def test_client_configuration(s3_endpoint: S3Endpoint, bucket: str) -> None:
    store = s3_endpoint.store(bucket, mget_concurrency=32, read_timeout=7, max_attempts=5)
    config = store.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert config.max_pool_connections == 32
    assert config.read_timeout == 7
    assert s3_endpoint.store(bucket).client.meta.config.max_pool_connections == 16
    explicit = s3_endpoint.store(bucket, max_pool_connections=50)
    assert explicit.client.meta.config.max_pool_connections == 50


def test_client_is_lazy_shared_and_created_once_under_threads() -> None:
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9", access_key_id="a",
                    secret_access_key="b", region="us-east-1")  # fmt: skip
    assert "secret" not in repr(store) and "b'" not in repr(store)
    barrier = threading.Barrier(8)

    def grab(_: int) -> int:
        barrier.wait()
        return id(store.client)

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(grab, range(8)))
    assert ids == {id(store.client)}


def test_a_forked_child_gets_its_own_client(store: S3Store) -> None:
    store.put("k", b"from the parent")
    parent_client = store.client
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any pytest machinery
        verdict = b"E"
        try:
            child_client = store.client
            fresh = child_client is not parent_client and store.client is child_client
            verdict = b"1" if fresh and store.get("k") == b"from the parent" else b"0"
        finally:
            os.write(write_end, verdict)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        verdict = pipe.read()
    os.waitpid(pid, 0)
    assert verdict == b"1"
    assert store.client is parent_client


def test_transient_errors() -> None:
    def error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    assert is_transient(error("SlowDown", 503))
    assert is_transient(error("InternalError", 500))
    assert not is_transient(error("AccessDenied", 403))
    assert not is_transient(error("NoSuchBucket", 404))
    assert not is_transient(ValueError("x"))
    assert is_write_conflict(error("ConditionalRequestConflict", 409))
