"""Every logger at DEBUG, botocore's and the root logger included: a result sealed and opened
through a KMS KEK logs no intermediate key, no DEK and no result value (docs/security.md)."""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from celery import Celery

from celery_s3_envelope import pipeline
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.kek import KeyState
from celery_s3_envelope.keyring import Keyring
from celery_s3_envelope.kms import KmsKey

VALUE = "Zoë Ångström, diagnosis B02.9"


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Everything any logger says, at DEBUG, formatted as a log file would hold it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    names = ["", "botocore", "boto3", "urllib3", "celery", "celery_s3_envelope"]
    names += list(logging.root.manager.loggerDict)
    levels = {name: logging.getLogger(name).level for name in names}
    root.addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every DEK (and salt) the pipeline draws."""
    seen: list[bytes] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        value = real(n)
        seen.append(value)
        return value

    monkeypatch.setattr(pipeline.os, "urandom", urandom)
    return seen


def forms(secret: bytes) -> list[str]:
    """How a key could appear in a text log: raw, escaped as in a repr, base64, hex."""
    return [
        secret.decode("latin-1"),
        repr(secret)[2:-1],
        base64.b64encode(secret).decode(),
        secret.hex(),
        secret.hex().upper(),
    ]


def kms_app(make_app: Callable[..., Celery], kms_endpoint: str) -> Celery:
    client = boto3.client(
        "kms",
        endpoint_url=kms_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arn = client.create_key()["KeyMetadata"]["Arn"]
    keyring = Keyring([KmsKey("kms-1", arn, KeyState.ACTIVE)])
    return make_app(
        envelope_keyring=keyring,
        envelope_kms_endpoint_url=kms_endpoint,
        envelope_kms_region="us-east-1",
    )


def intermediate_keys(backend: EnvelopeS3Backend) -> list[bytes]:
    provider: Any = backend.keyring.active.provider  # type: ignore[attr-defined]
    generated = [cached.plaintext for cached in provider._generated.values()]
    decrypted = [plaintext for plaintext, _ in provider._decrypted.values()]
    return generated + decrypted


def test_a_kms_run_at_debug_logs_no_key_and_no_value(
    make_app: Callable[..., Celery],
    kms_endpoint: str,
    debug_log: io.StringIO,
    drawn: list[bytes],
) -> None:
    writer = kms_app(make_app, kms_endpoint).backend
    writer.store_result("t-1", {"patient": VALUE}, "SUCCESS")
    reader_app = make_app(**{k: writer.app.conf[k] for k in ("envelope_keyring",)})
    reader_app.conf.update(envelope_kms_endpoint_url=kms_endpoint, envelope_kms_region="us-east-1")
    reader = reader_app.backend  # a fresh provider: opening it calls KMS Decrypt
    assert reader.get_task_meta("t-1")["result"] == {"patient": VALUE}

    secrets = intermediate_keys(writer) + intermediate_keys(reader)
    secrets += [d[: pipeline.DEK_SIZE] for d in drawn if len(d) > pipeline.DEK_SIZE]
    assert len(secrets) >= 3  # the writer's and the reader's intermediate key, a DEK
    log = debug_log.getvalue()
    assert "GenerateDataKey" in log and "Decrypt" in log  # botocore did log the KMS calls
    assert "Response body" in log
    found = [
        f"{kind} key" for kind, secret in (("a", s) for s in secrets) if secret in log.encode()
    ]
    found += [form for secret in secrets for form in forms(secret) if form in log]
    assert not found, found
    for shown in (VALUE, VALUE.encode("unicode_escape").decode(), "Zo\\u00eb"):
        assert shown not in log
