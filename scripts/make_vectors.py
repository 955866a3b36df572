"""Generate tests/vectors/valid.json and invalid.json (run: `make vectors`).

Vectors pin format version 1: fixed KEKs, DEKs and salts give fixed envelopes. Compressed cases
record the zstd frame, so checking them does not depend on the zstd library's exact output.
A change to the generated files is a format change.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from pathlib import Path

from celery_s3_envelope.envelope import (
    Compression,
    PayloadKind,
    WrapMethod,
    associated_data,
    pack,
    unpack,
)
from celery_s3_envelope.kek import KeyState, LocalKey
from celery_s3_envelope.keyring import Keyring
from celery_s3_envelope.kms import KmsKey, KmsProvider
from celery_s3_envelope.pipeline import EncryptStage, Pipeline
from celery_s3_envelope.tenants import _wrap_record, tenant_kek_id

OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors"
CREATED = datetime(2026, 11, 25, tzinfo=UTC)
TASK_KEY = "celery-task-meta-5f0d3c6e-2b7a-4a59-9d1e-0c8f2a6b7e41"
OTHER_KEY = "celery-task-meta-9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MESSAGE_KEY = "application/x-celery-s3-envelope; task=5f0d3c6e-2b7a-4a59-9d1e-0c8f2a6b7e41"
"""A task message body's binding (``messages.binding``): the content type and the task id."""
OTHER_MESSAGE_KEY = "application/x-celery-s3-envelope; task=9a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def fixed(seed: int, size: int) -> bytes:
    return bytes((seed + i) % 256 for i in range(size))


KEYRING = Keyring(
    [
        LocalKey("k1", fixed(1, 32), KeyState.ACTIVE, CREATED),
        LocalKey("k2", fixed(101, 32), KeyState.DECRYPT, CREATED),
        LocalKey("k3", fixed(201, 32), KeyState.RETIRED, CREATED),
    ]
)
PIPELINE = Pipeline()
ENCRYPT = EncryptStage()

RESULT_JSON = json.dumps(
    {
        "status": "SUCCESS",
        "result": {"patients": [{"id": i, "ward": "cardiology", "ok": True} for i in range(20)]},
        "traceback": None,
        "children": [],
        "date_done": "2026-11-25T12:00:00.000000+00:00",
        "task_id": "5f0d3c6e-2b7a-4a59-9d1e-0c8f2a6b7e41",
    }
)


MESSAGE_JSON = json.dumps(  # Celery's protocol 2 body: [args, kwargs, embed], as kombu's JSON
    [
        [{"patient": 7, "ward": "cardiology", "notes": "follow-up in two weeks"}],
        {"priority": "high", "tags": ["a", "b", "c"] * 10},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
)


def seal_case(
    description: str,
    value: str | bytes,
    *,
    key: str = TASK_KEY,
    kek_id: str = "k1",
    seed: int = 0,
) -> dict[str, object]:
    data, kind = PIPELINE.serialize.encode(value)
    payload, compression = PIPELINE.compress.encode(data)
    dek, salt = fixed(seed + 50, 32), fixed(seed + 150, 16)
    envelope = ENCRYPT.seal(
        payload,
        payload_kind=kind,
        compression=compression,
        payload_size=len(data),
        key=key,
        kek=KEYRING.get(kek_id),
        dek=dek,
        salt=salt,
    )
    case: dict[str, object] = {"description": description, "key": key, "kek_id": kek_id}
    case.update({"text": value} if isinstance(value, str) else {"bytes_hex": value.hex()})
    case.update({"dek_hex": dek.hex(), "salt_hex": salt.hex()})
    if compression is Compression.ZSTD:
        case["frame_hex"] = payload.hex()
    case["envelope_hex"] = envelope.hex()
    return case


def invalid(
    description: str, envelope: bytes, error: str, *, key: str | None = None, max_size: int = 0
) -> dict[str, object]:
    case: dict[str, object] = {
        "description": description,
        "envelope_hex": envelope.hex(),
        "key": key,
        "error": error,
    }
    if max_size:
        case["max_size"] = max_size
    return case


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes((data[index] ^ 0x01,)) + data[index + 1 :]


def relabel(envelope: bytes, kek_id: str) -> bytes:
    parts = unpack(envelope)
    header = parts.header.with_slot(
        wrap_method=parts.header.wrap_method, kek_id=kek_id, wrap_body=parts.header.wrap_body
    )
    return pack(header, bytes(parts.ciphertext))


class StandInKms:
    """A fixed local stand-in for KMS: one intermediate key, one fake blob, one context."""

    def __init__(self, intermediate: bytes, blob: bytes, context: dict[str, str]) -> None:
        self.intermediate, self.blob, self.context = intermediate, blob, context

    def generate_data_key(self, **kw: object) -> dict[str, bytes]:
        assert kw["EncryptionContext"] == self.context
        return {"Plaintext": self.intermediate, "CiphertextBlob": self.blob}

    def decrypt(self, **kw: object) -> dict[str, bytes]:
        assert kw["CiphertextBlob"] == self.blob and kw["EncryptionContext"] == self.context
        return {"Plaintext": self.intermediate}


def kms_case() -> dict[str, object]:
    """A KMS envelope whose KMS calls are answered by ``StandInKms`` (tests do the same)."""
    kek_id, arn, scope = "kms-1", "arn:aws:kms:eu-west-1:111122223333:key/example", "bucket/celery/"
    stand_in = StandInKms(
        fixed(77, 32), b"FAKE-KMS-BLOB:" + fixed(33, 50), KmsProvider.context(kek_id, scope)
    )
    provider = KmsProvider(scope=scope, client_factory=lambda: stand_in)  # type: ignore[arg-type,return-value]
    kek = KmsKey(kek_id, arn, KeyState.ACTIVE, CREATED, provider=provider)
    dek, salt, value = fixed(70, 32), fixed(170, 16), "sealed under a KMS KEK"
    envelope = ENCRYPT.seal(
        value.encode(),
        payload_kind=PayloadKind.TEXT,
        compression=Compression.NONE,
        payload_size=len(value),
        key=TASK_KEY,
        kek=kek,
        dek=dek,
        salt=salt,
    )
    return {
        "description": "KMS KEK (fake blob, local stand-in for KMS Decrypt)",
        "keyring": {"version": 1, "keys": [kek.to_dict()]},
        "kms_stand_in": {
            "intermediate_key_hex": stand_in.intermediate.hex(),
            "blob_hex": stand_in.blob.hex(),
            "encryption_context": stand_in.context,
        },
        "key": TASK_KEY,
        "kek_id": kek_id,
        "text": value,
        "dek_hex": dek.hex(),
        "salt_hex": salt.hex(),
        "envelope_hex": envelope.hex(),
    }


def tenant_case() -> dict[str, object]:
    """An envelope sealed under tenant ``acme``'s KEK ``t/acme/1`` (docs/tenants.md), and that
    KEK's key-store record, wrapped under the root ``k1`` of the vectors' keyring."""
    kek_id = tenant_kek_id("acme", 1)
    material, record_salt = fixed(111, 32), fixed(211, 16)
    record = _wrap_record(kek_id, material, KEYRING.get("k1"), CREATED, salt=record_salt)
    dek, salt, value = fixed(80, 32), fixed(180, 16), "sealed under a tenant KEK"
    envelope = ENCRYPT.seal(
        value.encode(),
        payload_kind=PayloadKind.TEXT,
        compression=Compression.NONE,
        payload_size=len(value),
        key=TASK_KEY,
        kek=LocalKey(kek_id, material, KeyState.ACTIVE, CREATED),
        dek=dek,
        salt=salt,
    )
    return {
        "description": "tenant KEK t/acme/1 (its record in the key store under root k1)",
        "tenant": "acme",
        "kek_id": kek_id,
        "kek_hex": material.hex(),
        "record_name": "acme/1",
        "record_salt_hex": record_salt.hex(),
        "record": record.decode("utf-8"),
        "key": TASK_KEY,
        "text": value,
        "dek_hex": dek.hex(),
        "salt_hex": salt.hex(),
        "envelope_hex": envelope.hex(),
    }


def main() -> None:
    valid = [
        seal_case("empty text", "", seed=1),
        seal_case("short text, below the compression threshold", "hello, world", seed=2),
        seal_case("Celery result JSON, zstd compressed", RESULT_JSON, seed=3),
        seal_case("binary, not UTF-8", bytes(range(256))[::-1] * 2, seed=4),
        seal_case("text from several Unicode planes", "é中😀\U000e0041\U0010fffd", seed=5),
        seal_case("sealed under a decrypt-only KEK", "older result", kek_id="k2", seed=6),
        seal_case("object key with a base path", "x", key=f"results/prod/{TASK_KEY}", seed=7),
        seal_case(
            "task message body (envelope serializer)", MESSAGE_JSON, key=MESSAGE_KEY, seed=11
        ),
    ]
    base = bytes.fromhex(str(valid[1]["envelope_hex"]))
    other = bytes.fromhex(
        str(seal_case("other", "HELLO, WORLD", key=OTHER_KEY, seed=8)["envelope_hex"])
    )
    parsed = unpack(base)
    header = parsed.header

    # A DEK wrapped correctly for this header, but not the DEK the commitment pins.
    wrong_dek = fixed(99, 32)
    aad = associated_data(header)
    spliced_dek = pack(
        header.with_slot(
            wrap_method=WrapMethod.LOCAL,
            kek_id="k1",
            wrap_body=KEYRING.get("k1").wrap(wrong_dek, salt=header.salt, associated_data=aad),
        ),
        bytes(parsed.ciphertext),
    )
    # A validly sealed zstd frame that expands far past the size its header declares.
    bomb_frame = PIPELINE.compress._compressor().compress(b"\0" * (1 << 20))
    bomb = ENCRYPT.seal(
        bomb_frame,
        payload_kind=PayloadKind.BYTES,
        compression=Compression.ZSTD,
        payload_size=1024,
        key=TASK_KEY,
        kek=KEYRING.get("k1"),
        dek=fixed(60, 32),
        salt=fixed(160, 16),
    )
    big = seal_case("big", "y" * 2048, seed=9)
    unknown_compression = bytearray(base)
    unknown_compression[9] = 7  # compression id
    past_end = bytearray(base)
    struct.pack_into(">H", past_end, 5, len(base) + 10)

    cases = [
        invalid(
            "plaintext JSON left by the stock backend", b'{"status": "SUCCESS"}', "NotAnEnvelope"
        ),
        invalid("empty object", b"", "NotAnEnvelope"),
        invalid("format version 2", base[:4] + b"\x02" + base[5:], "UnsupportedVersion"),
        invalid("unknown compression id", bytes(unknown_compression), "UnsupportedVersion"),
        invalid("truncated inside the header", base[:40], "IntegrityError"),
        invalid("header length points past the end", bytes(past_end), "IntegrityError"),
        invalid("truncated payload (last byte dropped)", base[:-1], "IntegrityError"),
        invalid("one bit flipped in the GCM tag", flip(base, len(base) - 1), "IntegrityError"),
        invalid("one bit flipped in the salt", flip(base, 20), "IntegrityError"),
        invalid(
            "one bit flipped in the wrapped DEK",
            flip(base, header.header_size - 3),
            "IntegrityError",
        ),
        invalid("read from another object key", base, "IntegrityError", key=OTHER_KEY),
        invalid("key slot relabelled to an unknown KEK", relabel(base, "k9"), "UnknownKey"),
        invalid(
            "key slot relabelled to another existing KEK", relabel(base, "k2"), "IntegrityError"
        ),
        invalid(
            "sealed under a retired KEK",
            bytes.fromhex(str(seal_case("r", "old", kek_id="k3", seed=10)["envelope_hex"])),
            "RetiredKey",
        ),
        invalid(
            "key slot spliced from another envelope",
            pack(
                header.with_slot(
                    wrap_method=WrapMethod.LOCAL,
                    kek_id="k1",
                    wrap_body=unpack(other).header.wrap_body,
                ),
                bytes(parsed.ciphertext),
            ),
            "IntegrityError",
        ),
        invalid("DEK that does not match the key commitment", spliced_dek, "IntegrityError"),
        invalid(
            "payload ciphertext spliced from another envelope",
            base[: header.header_size] + other[unpack(other).header.header_size :],
            "IntegrityError",
        ),
        invalid(
            "declared size above the reader's maximum",
            bytes.fromhex(str(big["envelope_hex"])),
            "SizeLimitExceeded",
            max_size=1024,
        ),
        invalid("zstd frame expanding past its declared size", bomb, "SizeLimitExceeded"),
        invalid(
            "task message body read for another task id",
            bytes.fromhex(str(valid[-1]["envelope_hex"])),
            "IntegrityError",
            key=OTHER_MESSAGE_KEY,
        ),
    ]
    keyring = {"version": 1, "keys": [e.to_dict() for e in KEYRING]}
    kms_cases = [kms_case()]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, document in (
        (
            "valid.json",
            {
                "keyring": keyring,
                "vectors": valid,
                "kms_vectors": kms_cases,
                "tenant_vectors": [tenant_case()],
            },
        ),
        ("invalid.json", {"keyring": keyring, "vectors": cases}),
    ):
        (OUT / name).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(valid)} valid and {len(cases)} invalid vectors to {OUT}")


if __name__ == "__main__":
    main()
