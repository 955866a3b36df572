"""An error an envelope causes leaves no key in its traceback's frames: what an error tracker
(Sentry records every frame's locals) would capture holds no DEK, content key, wrapping key,
intermediate key or KEK, for a local KEK and a KMS KEK alike (docs/security.md)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope.envelope import Compression, PayloadKind, associated_data, pack, unpack
from celery_s3_envelope.kek import KeyState, LocalKey, derive_wrapping_key
from celery_s3_envelope.kms import KmsKey, KmsProvider
from celery_s3_envelope.pipeline import EncryptStage, Pipeline, derive_content_keys, rewrap

KEY = "results/celery-task-meta-0b7e6f3a"
DEK = bytes(range(1, 33))
SALT = bytes(range(100, 116))
KEK_MATERIAL = b"\x42" * 16 + bytes(range(200, 216))
INTERMEDIATE = bytes(range(60, 92))
WRONG_DEK = b"\x33" * 32
BLOB = b"kms-blob:" + bytes(16)


class FakeKms:
    """A KMS client handing out one known intermediate key, checking the context like KMS."""

    def __init__(self) -> None:
        self.contexts: dict[bytes, dict[str, str]] = {}

    def generate_data_key(self, **kw: Any) -> dict[str, bytes]:
        self.contexts[BLOB] = kw["EncryptionContext"]
        return {"Plaintext": INTERMEDIATE, "CiphertextBlob": BLOB}

    def decrypt(self, **kw: Any) -> dict[str, bytes]:
        if self.contexts.get(kw["CiphertextBlob"]) != kw["EncryptionContext"]:
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "InvalidCiphertextException", "Message": ""}}
            raise ClientError(error, "Decrypt")  # type: ignore[arg-type]
        return {"Plaintext": INTERMEDIATE}


@dataclass
class Case:
    name: str
    keyring: cse.Keyring
    secret_of: Callable[[bytes], list[bytes]]
    """The keys behind an envelope: KEK or intermediate key, DEK, content key, wrapping key."""


def local_case() -> Case:
    entry = LocalKey("k1", KEK_MATERIAL, KeyState.ACTIVE)

    def secrets(envelope: bytes) -> list[bytes]:
        header = unpack(envelope, header_only=True).header
        aad = associated_data(header)
        wrapping = derive_wrapping_key(KEK_MATERIAL, header.salt, entry.method, b"k1", aad)
        return [KEK_MATERIAL, wrapping]

    return Case("local", cse.Keyring([entry]), secrets)


def kms_case() -> Case:
    fake = FakeKms()
    provider = KmsProvider(scope="bucket/results/", client_factory=lambda: fake)  # type: ignore[arg-type,return-value]
    entry = KmsKey("kms-1", "arn:aws:kms:eu-west-1:111122223333:key/x", KeyState.ACTIVE)

    def secrets(envelope: bytes) -> list[bytes]:
        header = unpack(envelope, header_only=True).header
        aad = associated_data(header)
        wrapping = derive_wrapping_key(INTERMEDIATE, header.salt, entry.method, b"kms-1", aad)
        return [INTERMEDIATE, wrapping]

    return Case("kms", cse.Keyring([entry]).with_kms(provider), secrets)


CASES = [local_case, kms_case]


def sealed(case: Case, dek: bytes = DEK) -> bytes:
    return Pipeline().seal("a result", key=KEY, keyring=case.keyring, dek=dek, salt=SALT)


def with_slot_body(envelope: bytes, body: bytes) -> bytes:
    parts = unpack(envelope)
    header = parts.header
    slot = header.with_slot(wrap_method=header.wrap_method, kek_id=header.kek_id, wrap_body=body)
    return pack(slot, bytes(parts.ciphertext))


def tampered_slot(case: Case) -> bytes:
    envelope = sealed(case)
    body = bytearray(unpack(envelope).header.wrap_body)
    body[-1] ^= 1  # the AES key wrap of the DEK, last in both slot kinds
    return with_slot_body(envelope, bytes(body))


def tampered_payload(case: Case) -> bytes:
    envelope = bytearray(sealed(case))
    envelope[-1] ^= 1
    return bytes(envelope)


def wrong_commitment(case: Case) -> bytes:
    """A slot wrapping another DEK correctly for this header: only the commitment refuses it."""
    envelope = sealed(case)
    header = unpack(envelope).header
    wrong = case.keyring.active.wrap(
        WRONG_DEK, salt=header.salt, associated_data=associated_data(header)
    )
    return with_slot_body(envelope, wrong)


def bomb(case: Case) -> bytes:
    """An authentic zstd frame that expands past the size its header declares."""
    frame = Pipeline().compress._compressor().compress(b"\0" * (1 << 20))
    return EncryptStage().seal(
        frame,
        payload_kind=PayloadKind.BYTES,
        compression=Compression.ZSTD,
        payload_size=len(frame) + 100,
        key=KEY,
        kek=case.keyring.active,
        dek=DEK,
        salt=SALT,
    )


def unknown_key(case: Case) -> bytes:
    envelope = sealed(case)
    other = LocalKey("not-held", b"\x07" * 32, KeyState.ACTIVE)
    header = unpack(envelope).header
    body = other.wrap(DEK, salt=header.salt, associated_data=associated_data(header))
    parts = unpack(envelope)
    relabelled = parts.header.with_slot(wrap_method=other.method, kek_id=other.id, wrap_body=body)
    return pack(relabelled, bytes(parts.ciphertext))


DAMAGE = [tampered_slot, tampered_payload, wrong_commitment, bomb, unknown_key]


def all_secrets(case: Case, envelope: bytes) -> list[bytes]:
    header = unpack(envelope, header_only=True).header
    keys = derive_content_keys(DEK, header.salt, header.suite)
    wrong = derive_content_keys(WRONG_DEK, header.salt, header.suite)
    return [DEK, keys.key, WRONG_DEK, wrong.key, *case.secret_of(envelope)]


def frames(exc: BaseException) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every frame an error tracker records below the test's own, chained exceptions included."""
    seen: set[int] = set()
    pending: list[tuple[BaseException | None, bool]] = [(exc, True)]
    while pending:
        current, outermost = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb: TracebackType | None = current.__traceback__
        if outermost and tb is not None:
            tb = tb.tb_next  # the test function's own frame: it holds the keys on purpose
        while tb is not None:
            yield tb.tb_frame.f_code.co_qualname, dict(tb.tb_frame.f_locals)
            tb = tb.tb_next
        pending += [(current.__cause__, False), (current.__context__, False)]


def leaks(value: Any, secrets: list[bytes], depth: int = 0) -> bool:
    """A secret as bytes (alone, in a tuple, list or dict) or in the value's repr."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if any(secret in raw for secret in secrets):
            return True
    items: list[Any] = []
    if isinstance(value, tuple | list | set | frozenset):
        items = list(value)
    elif isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    if depth < 3 and any(leaks(item, secrets, depth + 1) for item in items):
        return True
    shown = repr(value)
    return any(
        form in shown
        for secret in secrets
        for form in (
            repr(secret)[2:-1],
            secret.hex(),
            base64.b64encode(secret).decode(),
        )
    )


def assert_no_key_in_frames(exc: BaseException, secrets: list[bytes]) -> None:
    found = [
        f"{where}: {name}"
        for where, local_vars in frames(exc)
        for name, value in local_vars.items()
        if leaks(value, secrets)
    ]
    assert not found, "key material in traceback locals:\n" + "\n".join(found)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("make_case", CASES, ids=["local", "kms"])
def test_unseal_errors_leave_no_key_in_any_frame(
    make_case: Callable[[], Case], damage: Callable[[Case], bytes]
) -> None:
    case = make_case()
    envelope = damage(case)
    with pytest.raises(cse.EnvelopeError) as raised:
        Pipeline().unseal(envelope, keyring=case.keyring, key=KEY)
    assert raised.value.__traceback__ is not None and raised.value.__traceback__.tb_next
    assert_no_key_in_frames(raised.value, all_secrets(case, envelope))


@pytest.mark.parametrize(
    "damage", [tampered_slot, wrong_commitment, unknown_key], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("make_case", CASES, ids=["local", "kms"])
def test_rewrap_errors_leave_no_key_in_any_frame(
    make_case: Callable[[], Case], damage: Callable[[Case], bytes]
) -> None:
    """Rotation's path: the old slot is unwrapped to wrap the DEK again."""
    case = make_case()
    envelope = damage(case)
    with pytest.raises(cse.EnvelopeError) as raised:
        rewrap(envelope, keyring=case.keyring, key=KEY)
    assert_no_key_in_frames(raised.value, all_secrets(case, envelope))


def test_the_walk_finds_keys_the_codec_frames_hold() -> None:
    """The check itself: the frames below the entry point do hold keys before they are cleared
    (so the assertions above are not vacuous)."""
    case = local_case()
    envelope = tampered_payload(case)
    pipeline = Pipeline()
    unseal = Pipeline.unseal.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(cse.IntegrityError) as raised:
        unseal(pipeline, envelope, keyring=case.keyring, key=KEY)
    with pytest.raises(AssertionError, match="key material in traceback locals"):
        assert_no_key_in_frames(raised.value, all_secrets(case, envelope))


def test_the_callers_exception_in_flight_keeps_its_locals() -> None:
    """Clearing stops at the entry point: an exception the caller was already handling (its
    ``__context__``) keeps the caller's frames for the error tracker."""
    case = local_case()
    envelope = tampered_payload(case)

    def caller() -> None:
        patient_id = "kept for the error tracker"  # noqa: F841 (the local under test)
        raise KeyError("the caller's own failure")

    try:
        caller()
    except KeyError:
        with pytest.raises(cse.IntegrityError) as raised:
            Pipeline().unseal(envelope, keyring=case.keyring, key=KEY)
    context: BaseException | None = raised.value
    while context is not None and not isinstance(context, KeyError):
        context = context.__context__
    assert isinstance(context, KeyError) and context.__traceback__ is not None
    frames_of_caller = [
        tb.tb_frame.f_locals
        for tb in iter_tb(context.__traceback__)
        if "patient_id" in tb.tb_frame.f_code.co_varnames
    ]
    assert frames_of_caller and frames_of_caller[0]["patient_id"] == "kept for the error tracker"
    assert_no_key_in_frames(raised.value, all_secrets(case, envelope))


def iter_tb(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next
