"""Published test vectors (tests/vectors/): every implementation of format v1 must agree."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope import errors
from celery_s3_envelope.envelope import Compression, unpack
from celery_s3_envelope.kms import KmsProvider
from celery_s3_envelope.pipeline import EncryptStage, Pipeline
from celery_s3_envelope.tenants import (
    DirectoryKeyObjects,
    TenantKeys,
    TenantKeyStore,
    _wrap_record,
    tenant_kek_id,
)
from support.paths import TESTS

VECTORS = TESTS / "vectors"


def load(name: str) -> tuple[cse.Keyring, list[dict[str, Any]]]:
    document = json.loads((VECTORS / name).read_text())
    return cse.Keyring.from_dict(document["keyring"]), document["vectors"]


VALID_KEYRING, VALID = load("valid.json")
INVALID_KEYRING, INVALID = load("invalid.json")


def expected_value(case: dict[str, Any]) -> str | bytes:
    return case["text"] if "text" in case else bytes.fromhex(case["bytes_hex"])


@pytest.mark.parametrize("case", VALID, ids=[c["description"] for c in VALID])
def test_valid_vector_opens(case: dict[str, Any]) -> None:
    envelope = bytes.fromhex(case["envelope_hex"])
    value = cse.unseal(envelope, keyring=VALID_KEYRING, key=case["key"])
    assert value == expected_value(case)
    assert type(value) is type(expected_value(case))
    header = cse.inspect(envelope)
    assert (header.key, header.kek_id) == (case["key"], case["kek_id"])


@pytest.mark.parametrize("case", VALID, ids=[c["description"] for c in VALID])
def test_valid_vector_is_reproduced_byte_for_byte(case: dict[str, Any]) -> None:
    """Sealing with the vector's fixed DEK and salt gives exactly the published bytes."""
    envelope = bytes.fromhex(case["envelope_hex"])
    dek, salt = bytes.fromhex(case["dek_hex"]), bytes.fromhex(case["salt_hex"])
    kek = VALID_KEYRING.get(case["kek_id"])
    header = unpack(envelope).header
    if header.compression is Compression.ZSTD:
        # The frame is part of the vector, so a different zstd release cannot break it.
        frame = bytes.fromhex(case["frame_hex"])
        rebuilt = EncryptStage().seal(
            frame,
            payload_kind=header.payload_kind,
            compression=header.compression,
            payload_size=header.payload_size,
            key=header.key,
            kek=kek,
            dek=dek,
            salt=salt,
        )
    else:
        keyring = cse.Keyring([kek.with_state(cse.KeyState.ACTIVE)])
        rebuilt = Pipeline().seal(
            expected_value(case), key=case["key"], keyring=keyring, dek=dek, salt=salt
        )
    assert rebuilt.hex() == case["envelope_hex"]


KMS_VECTORS = json.loads((VECTORS / "valid.json").read_text())["kms_vectors"]


class StandInKms:
    """Answers KMS calls from the vector: only the published blob and context are accepted."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def decrypt(self, **kw: Any) -> dict[str, bytes]:
        assert kw["CiphertextBlob"].hex() == self.spec["blob_hex"]
        assert kw["EncryptionContext"] == self.spec["encryption_context"]
        return {"Plaintext": bytes.fromhex(self.spec["intermediate_key_hex"])}

    def generate_data_key(self, **kw: Any) -> dict[str, bytes]:
        assert kw["EncryptionContext"] == self.spec["encryption_context"]
        return {
            "Plaintext": bytes.fromhex(self.spec["intermediate_key_hex"]),
            "CiphertextBlob": bytes.fromhex(self.spec["blob_hex"]),
        }


@pytest.mark.parametrize("case", KMS_VECTORS, ids=[c["description"] for c in KMS_VECTORS])
def test_kms_vector_opens_and_is_reproduced(case: dict[str, Any]) -> None:
    stand_in = StandInKms(case["kms_stand_in"])
    provider = KmsProvider(
        scope=case["kms_stand_in"]["encryption_context"]["scope"],
        client_factory=lambda: stand_in,  # type: ignore[arg-type,return-value]
    )
    keyring = cse.Keyring.from_dict(case["keyring"]).with_kms(provider)
    envelope = bytes.fromhex(case["envelope_hex"])
    assert cse.unseal(envelope, keyring=keyring, key=case["key"]) == case["text"]
    rebuilt = Pipeline().seal(
        case["text"],
        key=case["key"],
        keyring=keyring,
        dek=bytes.fromhex(case["dek_hex"]),
        salt=bytes.fromhex(case["salt_hex"]),
    )
    assert rebuilt.hex() == case["envelope_hex"]


TENANT_VECTORS = json.loads((VECTORS / "valid.json").read_text())["tenant_vectors"]


@pytest.mark.parametrize("case", TENANT_VECTORS, ids=[c["description"] for c in TENANT_VECTORS])
def test_tenant_vector_opens_through_its_key_record_and_is_reproduced(
    case: dict[str, Any], tmp_path: Path
) -> None:
    """Format v1 unchanged: the tenant KEK's id in the key slot, its key in a root-wrapped
    record (docs/tenants.md). The record, the tenant KEK and the envelope are all pinned."""
    objects = DirectoryKeyObjects(tmp_path / "tenant-keys")
    assert objects.create(case["record_name"], case["record"].encode("utf-8"))
    store = TenantKeyStore(objects, VALID_KEYRING)
    envelope = bytes.fromhex(case["envelope_hex"])
    assert cse.inspect(envelope).kek_id == case["kek_id"] == tenant_kek_id(case["tenant"], 1)
    reader = TenantKeys(store, VALID_KEYRING, None)
    assert Pipeline().unseal(envelope, keyring=reader, key=case["key"]) == case["text"]
    assert store.get(case["kek_id"]).to_dict()["key"] == base64.b64encode(
        bytes.fromhex(case["kek_hex"])
    ).decode("ascii")
    with pytest.raises(errors.UnknownKey):  # the root keyring alone does not open it
        cse.unseal(envelope, keyring=VALID_KEYRING, key=case["key"])
    record = _wrap_record(
        case["kek_id"],
        bytes.fromhex(case["kek_hex"]),
        VALID_KEYRING.get("k1"),
        datetime(2026, 11, 25, tzinfo=UTC),
        salt=bytes.fromhex(case["record_salt_hex"]),
    )
    assert record.decode("utf-8") == case["record"]
    rebuilt = Pipeline().seal(
        case["text"],
        key=case["key"],
        keyring=TenantKeys(store, VALID_KEYRING, case["tenant"]),
        dek=bytes.fromhex(case["dek_hex"]),
        salt=bytes.fromhex(case["salt_hex"]),
    )
    assert rebuilt.hex() == case["envelope_hex"]


@pytest.mark.parametrize("case", INVALID, ids=[c["description"] for c in INVALID])
def test_invalid_vector_raises_its_error(case: dict[str, Any]) -> None:
    error = getattr(errors, case["error"])
    with pytest.raises(error):
        cse.unseal(
            bytes.fromhex(case["envelope_hex"]),
            keyring=INVALID_KEYRING,
            key=case["key"],
            max_size=case.get("max_size", 64 * 1024 * 1024),
        )


def test_vectors_cover_every_error_class() -> None:
    covered = {case["error"] for case in INVALID}
    assert covered >= {
        "NotAnEnvelope",
        "UnsupportedVersion",
        "IntegrityError",
        "UnknownKey",
        "RetiredKey",
        "SizeLimitExceeded",
    }


def test_the_task_message_vector_opens_as_a_message() -> None:
    """The envelope serializer's body: the key field is the binding (content type and task id),
    the payload Celery's protocol 2 body as JSON."""
    from celery_s3_envelope.messages import TASK_BINDING, open_message

    (case,) = [c for c in VALID if c["key"].startswith(TASK_BINDING)]
    binding, body = open_message(bytes.fromhex(case["envelope_hex"]), VALID_KEYRING)
    assert binding == case["key"] == TASK_BINDING + "5f0d3c6e-2b7a-4a59-9d1e-0c8f2a6b7e41"
    args, kwargs, embed = body
    assert args[0]["patient"] == 7 and kwargs["priority"] == "high" and "chord" in embed
    assert cse.inspect(bytes.fromhex(case["envelope_hex"])).compression is Compression.ZSTD
