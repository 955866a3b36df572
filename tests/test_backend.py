"""``EnvelopeS3Backend`` as a Celery result backend: the stock S3Backend's behaviour, test for
test, then what the envelope adds (sealed objects, key binding, migration, compression)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError
from celery import states
from celery.backends.s3 import S3Backend
from celery.exceptions import ImproperlyConfigured
from celery.result import AsyncResult, ResultSet

from celery_s3_envelope import (
    IntegrityError,
    Keyring,
    NotAnEnvelope,
    RetiredKey,
    inspect,
    unseal,
)
from celery_s3_envelope import backend as backend_module
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.envelope import Compression, is_envelope
from celery_s3_envelope.kek import KeyState
from support.apps import MakeApp, backend_of
from support.celery_features import RESULT_COMPRESSION, needs_result_compression
from support.s3 import S3Endpoint, count_requests, missing_bucket_name, server_answers


# -- the stock S3Backend's tests, on this backend ---------------------------------------------
def test_with_missing_aws_credentials(make_app: MakeApp) -> None:
    app = make_app(s3_access_key_id=None, s3_secret_access_key=None)
    with pytest.raises(ImproperlyConfigured, match="Missing aws s3 creds"):
        EnvelopeS3Backend(app=app)


def test_without_credentials_in_config_uses_boto3_chain(
    make_app: MakeApp, s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    backend = backend_of(make_app(s3_access_key_id=None, s3_secret_access_key=None))
    backend.set("uuid", "from the chain")
    assert backend.get("uuid") == "from the chain"


def test_with_credentials_in_config_does_not_search_for_credentials(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    def search(*_: Any, **__: Any) -> None:
        raise AssertionError("the credential chain was searched")

    monkeypatch.setattr("botocore.credentials.CredentialResolver.load_credentials", search)
    backend_of(make_app()).get("uuid")


def test_with_no_given_bucket(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="Missing bucket name"):
        EnvelopeS3Backend(app=make_app(s3_bucket=None))


def test_creates_the_client_with_region_and_endpoint(
    make_app: MakeApp, s3_endpoint: S3Endpoint
) -> None:
    client = backend_of(make_app(s3_region="eu-west-3")).store.client
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.endpoint_url == s3_endpoint.endpoint_url


@pytest.mark.parametrize("key", ["uuid", b"uuid"])
def test_set_and_get_a_key(backend: EnvelopeS3Backend, key: str | bytes) -> None:
    backend.set(key, "another_status")
    assert backend.get(key) == "another_status"


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_set_and_get_a_result(make_app: MakeApp, serializer: str) -> None:
    app = make_app(result_serializer=serializer, accept_content=["json", "pickle"])
    backend = backend_of(app)
    backend.store_result("foo", "baar", states.STARTED)
    assert backend.get_result("foo") == "baar"
    assert backend.get_state("foo") == states.STARTED


def test_get_a_missing_key(backend: EnvelopeS3Backend) -> None:
    assert backend.get("uuidddd") is None
    assert backend.get_state("never-stored") == states.PENDING


def test_with_error_while_getting_key(backend: EnvelopeS3Backend) -> None:
    client = backend.store.client
    with (
        server_answers(client, "GetObject", 403, "AccessDenied"),
        pytest.raises(ClientError) as denied,
    ):
        backend.get("uuidddd")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_delete_a_key(backend: EnvelopeS3Backend) -> None:
    backend.set("uuid", "another_status")
    assert backend.get("uuid") == "another_status"
    backend.delete("uuid")
    assert backend.get("uuid") is None


def test_with_a_non_existing_bucket(make_app: MakeApp) -> None:
    backend = backend_of(make_app(s3_bucket=missing_bucket_name()))
    with pytest.raises(ClientError, match="NoSuchBucket") as missing:
        backend.set("uuid", "another_status")
    assert "bucket" in str(missing.value).lower()


def test_with_base_path(make_app: MakeApp, s3_client: Any, bucket: str) -> None:
    backend = backend_of(make_app(s3_base_path="test/base/path/"))
    backend.set("uuid", "another_status")
    stored = s3_client.get_object(Bucket=bucket, Key="test/base/path/uuid")["Body"].read()
    assert inspect(stored).key == "test/base/path/uuid"
    assert backend.get("uuid") == "another_status"
    assert s3_client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


# -- request counts: one request per get/set/delete and per store_result (test_store_result.py) --
def test_request_counts(backend: EnvelopeS3Backend, make_app: MakeApp) -> None:
    backend.store_result("task", "first", states.STARTED)
    client = backend.store.client
    with count_requests(client) as get:
        backend.get(backend.get_key_for_task("task"))
    with count_requests(client) as set_:
        backend.set("other", "value")
    with count_requests(client) as delete:
        backend.delete("other")
    with count_requests(client) as store_result:
        backend.store_result("task", "second", states.SUCCESS)
    assert (get.methods, set_.methods, delete.methods) == (["GET"], ["PUT"], ["DELETE"])
    assert store_result.conditional == ["PUT If-Match"]  # over the STARTED it wrote itself

    stock = S3Backend(app=make_app())  # the same flow on Celery's own backend: HEAD, GET, PUT
    stock.store_result("stock-task", "first", states.STARTED)
    with count_requests(stock._s3_resource.meta.client) as stock_store_result:
        stock.store_result("stock-task", "second", states.SUCCESS)
    assert stock_store_result.methods == ["HEAD", "GET", "PUT"]


# -- what the envelope adds --------------------------------------------------------------------
def test_objects_are_sealed_for_their_full_key(
    make_app: MakeApp, keyring: Keyring, s3_client: Any, bucket: str
) -> None:
    backend = backend_of(make_app(s3_base_path="r/"))
    backend.store_result("t1", {"card": "4111 1111 1111 1111"}, states.SUCCESS)
    body = s3_client.get_object(Bucket=bucket, Key="r/celery-task-meta-t1")["Body"].read()
    assert is_envelope(body) and b"4111" not in body and b"SUCCESS" not in body
    assert inspect(body).key == "r/celery-task-meta-t1"
    assert '"4111 1111 1111 1111"' in str(unseal(body, keyring=keyring))


def test_an_object_copied_to_another_task_is_refused(
    backend: EnvelopeS3Backend, s3_client: Any, bucket: str
) -> None:
    backend.store_result("task-a", "A's result", states.SUCCESS)
    s3_client.copy_object(
        Bucket=bucket,
        Key="celery-task-meta-task-b",
        CopySource={"Bucket": bucket, "Key": "celery-task-meta-task-a"},
    )
    with pytest.raises(IntegrityError, match="sealed for object key"):
        backend.get_task_meta("task-b")


def test_binary_serializer_returns_bytes_like_stock(make_app: MakeApp) -> None:
    backend = backend_of(make_app(result_serializer="pickle", accept_content=["pickle"]))
    backend.set("k", b"\x80\x04raw")
    assert backend.get("k") == b"\x80\x04raw"
    text = backend_of(make_app())
    text.set("t", "caf\u00e9")
    assert text.get("t") == "caf\u00e9"


def test_mget_and_native_join(make_app: MakeApp) -> None:
    app = make_app()
    backend = backend_of(app)
    for n in range(5):
        backend.store_result(f"t{n}", n * 10, states.SUCCESS)
    keys = [backend.get_key_for_task(f"t{n}") for n in (3, 1, 9)]
    values = backend.mget(keys)
    assert [backend.decode(v)["result"] if v else v for v in values] == [30, 10, None]
    results = ResultSet([AsyncResult(f"t{n}", app=app) for n in range(5)], app=app)
    assert results.supports_native_join
    assert results.join_native(timeout=10) == [0, 10, 20, 30, 40]


def test_legacy_plaintext_is_refused_by_default(
    make_app: MakeApp, s3_client: Any, bucket: str
) -> None:
    S3Backend(app=make_app()).store_result("legacy", "old", states.SUCCESS)
    backend = backend_of(make_app())
    with pytest.raises(NotAnEnvelope, match="envelope_allow_plaintext"):
        backend.get_task_meta("legacy")


def test_legacy_plaintext_is_read_in_migration_mode(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(backend_module, "_plaintext_warned_pid", None)
    stock = S3Backend(app=make_app())
    stock.store_result("legacy-1", "old one", states.SUCCESS)
    stock.store_result("legacy-2", KeyError("old two"), states.FAILURE)
    backend = backend_of(make_app(envelope_allow_plaintext=True))
    with caplog.at_level(logging.WARNING, logger=backend_module.__name__):
        assert backend.get_result("legacy-1") == "old one"
        assert backend.get_state("legacy-2") == states.FAILURE
    warnings = [r for r in caplog.records if r.name == backend_module.__name__]
    assert len(warnings) == 1 and "celery-task-meta-legacy-1" in warnings[0].getMessage()
    assert "old one" not in caplog.text
    backend.store_result("legacy-1", "rewritten", states.SUCCESS)  # SUCCESS is kept, as in stock
    assert backend.get_result("legacy-1") == "old one"


@pytest.mark.parametrize(
    "compression", [None, pytest.param("gzip", marks=needs_result_compression)]
)
def test_result_compression_is_never_compressed_twice(
    make_app: MakeApp, s3_client: Any, bucket: str, compression: str | None
) -> None:
    backend = backend_of(make_app(result_compression=compression))
    if RESULT_COMPRESSION:  # older Celery has no compression attribute: zstd alone, as below
        assert backend.compression == compression  # accepted, not ignored with a warning
    big = "a fairly repetitive result " * 500
    backend.store_result("big", big, states.SUCCESS)
    body = s3_client.get_object(Bucket=bucket, Key="celery-task-meta-big")["Body"].read()
    expected = Compression.NONE if compression else Compression.ZSTD
    assert inspect(body).compression is expected
    assert len(body) < len(big) // 10
    assert backend.get_result("big") == big
    assert backend_of(make_app()).get_result("big") == big  # readers need no setting


def _tamper(s3_client: Any, bucket: str, key: str) -> None:
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 1
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def test_store_result_over_a_tampered_object_writes_and_warns(
    backend: EnvelopeS3Backend, s3_client: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend.store_result("t", "secret progress", states.STARTED)
    _tamper(s3_client, bucket, "celery-task-meta-t")
    with pytest.raises(IntegrityError):  # reads stay strict
        backend.get_task_meta("t", cache=False)
    with caplog.at_level(logging.WARNING, logger=backend_module.__name__):
        backend.store_result("t", "final", states.SUCCESS)
    (warning,) = [r for r in caplog.records if r.name == backend_module.__name__]
    assert "'celery-task-meta-t'" in warning.getMessage()
    assert "IntegrityError" in warning.getMessage()
    assert "secret progress" not in caplog.text
    assert backend.get_result("t") == "final"


def test_store_result_over_a_retired_kek_writes_under_the_active_one(
    make_app: MakeApp, keyring: Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    backend_of(make_app()).store_result("t", "old", states.SUCCESS)
    rotated = keyring.with_entry(Keyring.generate("k2").active, activate=True)
    rotated = rotated.with_state("k1", KeyState.RETIRED)
    backend = backend_of(make_app(envelope_keyring=rotated))
    with pytest.raises(RetiredKey):
        backend.get_result("t")
    with caplog.at_level(logging.WARNING, logger=backend_module.__name__):
        backend.store_result("t", "new", states.SUCCESS)
    assert "RetiredKey" in caplog.text
    assert backend.get_result("t") == "new"


def test_a_readable_success_is_still_never_overwritten(backend: EnvelopeS3Backend) -> None:
    backend.store_result("t", "first", states.SUCCESS)
    backend.store_result("t", "late duplicate", states.FAILURE)
    assert backend.get_result("t") == "first"


def test_exception_safe_to_retry(backend: EnvelopeS3Backend) -> None:
    def error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
        )

    assert backend.exception_safe_to_retry(error("SlowDown", 503))
    assert not backend.exception_safe_to_retry(error("AccessDenied", 403))
    assert not backend.exception_safe_to_retry(IntegrityError("tampered"))
