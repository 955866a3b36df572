"""No key material (KEK or DEK, raw, hex or base64) and no result plaintext in any log record,
exception message, repr() or URI, at DEBUG, across the backend, the keyring, rotation and scan."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

import celery_s3_envelope as cse
from celery_s3_envelope import pipeline
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.scan import scan
from celery_s3_envelope.pipeline import EncryptStage, derive_content_keys
from celery_s3_envelope.store import S3Store

MARKER = "PLAINTEXT-MARKER-7f3a"


def forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), repr(secret)]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.texts.append(text)


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def deks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every DEK the pipeline draws (the first 32 bytes of its os.urandom(48))."""
    seen: list[bytes] = []
    real = os.urandom

    def recording(n: int) -> bytes:
        data = real(n)
        if n == pipeline.DEK_SIZE + 16:
            seen.append(data[: pipeline.DEK_SIZE])
        return data

    monkeypatch.setattr(pipeline.os, "urandom", recording)
    return seen


pytestmark = pytest.mark.s3


def test_nothing_secret_in_logs_errors_reprs_or_uris(
    make_app: Callable[..., Celery],
    store: S3Store,
    captured: Capture,
    deks: list[bytes],
    keyring: cse.Keyring,
) -> None:
    new_key = cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE)
    rotated = keyring.with_entry(new_key, activate=True)
    app = make_app(s3_base_path="celery/")
    backend = app.backend
    errors: list[str] = []
    for i in range(20):
        backend.store_result(f"task-{i}", {"secret": MARKER, "n": i}, "SUCCESS")
        backend.get_task_meta(f"task-{i}")
    backend.mget([f"celery-task-meta-task-{i}" for i in range(20)])
    # failures: a tampered object, one copied onto another key, one under an unknown KEK
    victim = "celery/celery-task-meta-task-0"
    tampered = bytearray(store.get(victim) or b"")
    tampered[-3] ^= 1
    store.put(victim, bytes(tampered))
    store.put("celery/celery-task-meta-task-1", store.get("celery/celery-task-meta-task-2") or b"")
    stranger = cse.Keyring.generate("k-unknown")
    store.put(
        "celery/celery-task-meta-task-3",
        cse.seal(MARKER, key="celery/celery-task-meta-task-3", keyring=stranger),
    )
    for task in ("task-0", "task-1", "task-3"):
        backend._cache.clear()
        try:
            backend.get(f"celery-task-meta-{task}")
        except cse.EnvelopeError as exc:
            errors.append(f"{exc!r} {exc}")
    assert len(errors) == 3
    Rotation(store, rotated, prefix="celery/").run()
    report = scan(store, prefix="celery/")
    assert deks, "the DEK recorder saw the pipeline's draws"

    shown = "\n".join(
        [
            *captured.texts,
            *errors,
            repr(backend),
            str(backend.as_uri()),
            str(backend.as_uri(include_password=False)),
            repr(backend.store),
            repr(keyring),
            repr(rotated),
            repr(new_key),
            repr(report.to_dict()),
        ]
    )
    secrets: list[bytes] = list(deks)
    secrets += [base64.b64decode(entry.to_dict()["key"]) for entry in rotated]
    for secret in secrets:
        for form in forms(secret):
            assert form not in shown
    assert MARKER not in "\n".join([*errors, repr(backend), repr(report.to_dict())])
    for text in captured.texts:
        assert MARKER not in text, text
    assert "testing-secret-access-key" not in shown  # the S3 secret of conftest's endpoint


def test_key_holding_objects_do_not_show_key_material_in_repr() -> None:
    dek, salt = os.urandom(32), os.urandom(16)
    keys = derive_content_keys(dek, salt, EncryptStage.suite)
    assert repr(keys.key) not in repr(keys) and repr(keys.commitment) not in repr(keys)
    from celery_s3_envelope.kms import _CachedKey

    secret = os.urandom(32)
    assert repr(secret) not in repr(_CachedKey(secret, b"blob", 0.0, 1))
