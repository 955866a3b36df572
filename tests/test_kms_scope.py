"""What a KMS key slot's scope proves, exactly as docs/security.md states it: the bucket and
prefix of the writer that last wrapped the data key, enforced by KMS (the slot's scope is the
encryption context of the Decrypt, and CloudTrail logs it). It does not prove where the object is
read from: a copy opens under another scope, and the Decrypt still names the original one."""

from __future__ import annotations

from typing import Any

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope.envelope import pack, unpack
from celery_s3_envelope.kms import KmsProvider, parse_kms_body
from celery_s3_envelope.pipeline import rewrap
from support.kms import CountingKms, fake_keyring

KEY = "celery/celery-task-meta-1"


class ContextLog(CountingKms):
    """KMS that also records each Decrypt's encryption context (what CloudTrail shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.decrypt_contexts: list[dict[str, str]] = []

    def decrypt(self, **kw: Any) -> dict[str, bytes]:
        self.decrypt_contexts.append(dict(kw["EncryptionContext"]))
        return super().decrypt(**kw)


def reader_of(kms: ContextLog, keyring: cse.Keyring, scope: str) -> cse.Keyring:
    return keyring.with_kms(KmsProvider(client_factory=lambda: kms, scope=scope))  # type: ignore[arg-type,return-value]


def test_a_copy_opens_under_another_scope_and_kms_sees_the_sealing_scope() -> None:
    kms = ContextLog()
    writer, _ = fake_keyring(kms, scope="bucket-a/celery/")
    envelope = cse.seal("value", key=KEY, keyring=writer)
    elsewhere = reader_of(kms, writer, "bucket-b/celery/")  # the same key in another bucket
    assert cse.unseal(envelope, keyring=elsewhere, key=KEY) == "value"
    assert kms.decrypt_contexts[-1]["scope"] == "bucket-a/celery/"  # not where it was read


def test_the_slot_scope_cannot_be_changed_without_kms_refusing() -> None:
    kms = ContextLog()
    writer, _ = fake_keyring(kms, scope="bucket-a/celery/")
    envelope = cse.seal("value", key=KEY, keyring=writer)
    header = unpack(envelope).header
    _, blob, wrapped = parse_kms_body(header.wrap_body)
    forged_scope = b"bucket-b/celery/"
    body = len(forged_scope).to_bytes(2, "big") + forged_scope
    body += len(blob).to_bytes(2, "big") + blob + wrapped
    forged = pack(
        header.with_slot(wrap_method=header.wrap_method, kek_id=header.kek_id, wrap_body=body),
        bytes(unpack(envelope).ciphertext),
    )
    with pytest.raises(cse.EnvelopeError, match="InvalidCiphertextException"):
        cse.unseal(forged, keyring=reader_of(kms, writer, "bucket-b/celery/"), key=KEY)


def test_rotation_wraps_for_the_scope_it_runs_with() -> None:
    kms = ContextLog()
    writer, _ = fake_keyring(kms, scope="bucket-a/celery/")
    envelope = cse.seal("value", key=KEY, keyring=writer)
    rotated = rewrap(envelope, keyring=reader_of(kms, writer, "bucket-b/celery/"), key=KEY)
    scope, _, _ = parse_kms_body(unpack(rotated).header.wrap_body)
    assert scope == "bucket-b/celery/"
