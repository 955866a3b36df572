"""Adversarial tests: any change to an envelope is detected, and only EnvelopeError escapes."""

from __future__ import annotations

import contextlib
import os
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celery_s3_envelope as cse
from celery_s3_envelope.envelope import Compression, PayloadKind, associated_data, pack, unpack
from celery_s3_envelope.pipeline import DEFAULT_MAX_SIZE, EncryptStage, Pipeline

KEY = "celery-task-meta-0b8e4f5a-1c2d-4e3f-9a8b-7c6d5e4f3a2b"
KEYRING = cse.Keyring.generate("k1")
COMPRESSIBLE = ('{"status": "SUCCESS", "result": ' + '{"v": 1}, ' * 100)[:1024]
INCOMPRESSIBLE = os.urandom(1024)
SEALED = {
    "compressible": cse.seal(COMPRESSIBLE, key=KEY, keyring=KEYRING),
    "incompressible": cse.seal(INCOMPRESSIBLE, key=KEY, keyring=KEYRING),
}


@pytest.mark.parametrize("name", sorted(SEALED))
def test_every_single_byte_modification_is_detected(name: str) -> None:
    envelope = SEALED[name]
    header_size = cse.inspect(envelope).header_size
    for position in range(len(envelope)):
        # Every other value in the header; a spread of values in the payload.
        deltas = range(1, 256) if position < header_size else (0x01, 0x80, 0xFF)
        for delta in deltas:
            changed = bytearray(envelope)
            changed[position] ^= delta
            with pytest.raises(cse.EnvelopeError):
                cse.unseal(bytes(changed), keyring=KEYRING, key=KEY)
            with pytest.raises(cse.EnvelopeError):  # offline decode checks everything else too
                cse.unseal(bytes(changed), keyring=KEYRING)


@pytest.mark.parametrize("name", sorted(SEALED))
def test_every_truncation_and_extension_is_detected(name: str) -> None:
    envelope = SEALED[name]
    for length in range(len(envelope)):
        with pytest.raises(cse.EnvelopeError):
            cse.unseal(envelope[:length], keyring=KEYRING, key=KEY)
    for tail in (b"\x00", b"extra bytes", envelope):
        with pytest.raises(cse.IntegrityError):
            cse.unseal(envelope + tail, keyring=KEYRING, key=KEY)


def test_envelope_read_from_another_key_is_refused() -> None:
    envelope = cse.seal("for k", key="k", keyring=KEYRING)
    with pytest.raises(cse.IntegrityError, match="'k'"):
        cse.unseal(envelope, keyring=KEYRING, key="other")
    with pytest.raises(cse.IntegrityError):
        cse.unseal(envelope, keyring=KEYRING, key="base/k")  # another prefix
    assert cse.unseal(envelope, keyring=KEYRING) == "for k"  # offline: key not checked


def test_unknown_kek_is_named() -> None:
    other = cse.Keyring.generate("k-elsewhere")
    with pytest.raises(cse.UnknownKey, match="k-elsewhere") as caught:
        cse.unseal(cse.seal("v", key=KEY, keyring=other), keyring=KEYRING, key=KEY)
    assert caught.value.kek_id == "k-elsewhere"


def test_same_kek_id_with_other_material_is_refused() -> None:
    impostor = cse.Keyring.generate("k1")  # same id, different key (another keyring)
    with pytest.raises(cse.IntegrityError):
        cse.unseal(cse.seal("v", key=KEY, keyring=impostor), keyring=KEYRING, key=KEY)


def test_retired_kek_is_refused_clearly() -> None:
    envelope = cse.seal("v", key=KEY, keyring=KEYRING)
    rotated = KEYRING.with_entry(
        cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE), activate=True
    )
    retired = rotated.with_state("k1", cse.KeyState.RETIRED)
    with pytest.raises(cse.RetiredKey, match=r"k1.*retired"):
        cse.unseal(envelope, keyring=retired, key=KEY)
    assert cse.unseal(envelope, keyring=rotated, key=KEY) == "v"


def _sealed_frame(frame: bytes, declared: int) -> bytes:
    """A correctly encrypted envelope around any zstd frame (what a KEK holder could make)."""
    return EncryptStage().seal(
        frame,
        payload_kind=PayloadKind.BYTES,
        compression=Compression.ZSTD,
        payload_size=declared,
        key=KEY,
        kek=KEYRING.active,
    )


@pytest.mark.parametrize("declared", [1024, 1 << 20, DEFAULT_MAX_SIZE + 1, 2**63])
def test_zstd_bomb_is_refused_without_allocating(declared: int) -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))  # 256 MiB of zeros
    assert len(frame) < 64 << 10
    bomb = _sealed_frame(frame, declared)
    tracemalloc.start()
    try:
        with pytest.raises(cse.SizeLimitExceeded):
            cse.unseal(bomb, keyring=KEYRING, key=KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a bomb"


def test_compressed_envelope_with_oversized_ciphertext_is_refused_before_decryption() -> None:
    keyring = cse.Keyring.generate("k1")
    limit = 1024 * 1024
    envelope = EncryptStage().seal(
        b"\0" * (8 * limit),  # 8 MiB of "compressed" payload declaring a 10-byte plaintext
        payload_kind=PayloadKind.BYTES,
        compression=Compression.ZSTD,
        payload_size=10,
        key=KEY,
        kek=keyring.active,
    )
    tracemalloc.start()
    try:
        with pytest.raises(cse.EnvelopeError):
            Pipeline(max_size=limit).unseal(envelope, keyring=keyring, key=KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit


def test_frame_without_content_size_or_with_trailing_data_is_refused() -> None:
    import zstandard

    unknown_size = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = unknown_size.compress(b"a" * 1000) + unknown_size.flush()
    with pytest.raises(cse.SizeLimitExceeded):
        cse.unseal(_sealed_frame(frame, 1000), keyring=KEYRING, key=KEY)
    good = zstandard.ZstdCompressor().compress(b"a" * 1000)
    assert cse.unseal(_sealed_frame(good, 1000), keyring=KEYRING, key=KEY) == b"a" * 1000
    with pytest.raises(cse.IntegrityError):
        cse.unseal(_sealed_frame(good + b"trailing", 1000), keyring=KEYRING, key=KEY)
    with pytest.raises(cse.IntegrityError):
        cse.unseal(_sealed_frame(good + good, 1000), keyring=KEYRING, key=KEY)


def test_decode_limit_is_the_readers_choice() -> None:
    envelope = cse.seal("q" * 5000, key=KEY, keyring=KEYRING)
    with pytest.raises(cse.SizeLimitExceeded):
        Pipeline(max_size=4999).unseal(envelope, keyring=KEYRING, key=KEY)


def test_splicing_slot_and_payload_between_envelopes_is_refused() -> None:
    a = unpack(cse.seal("value-a" * 10, key=KEY, keyring=KEYRING))
    b = unpack(cse.seal("value-b" * 10, key=KEY, keyring=KEYRING))
    slot_from_b = a.header.with_slot(
        wrap_method=b.header.wrap_method, kek_id=b.header.kek_id, wrap_body=b.header.wrap_body
    )
    with pytest.raises(cse.IntegrityError):
        cse.unseal(pack(slot_from_b, bytes(a.ciphertext)), keyring=KEYRING, key=KEY)
    with pytest.raises(cse.IntegrityError):  # same length payload from b under a's header
        cse.unseal(pack(a.header, bytes(b.ciphertext)), keyring=KEYRING, key=KEY)


def _relabelled(envelope: bytes, kek_id: str) -> bytes:
    """``envelope`` with only its key slot's KEK id changed (wrap method and body kept)."""
    parts = unpack(envelope)
    header = parts.header
    slot = header.with_slot(
        wrap_method=header.wrap_method, kek_id=kek_id, wrap_body=header.wrap_body
    )
    return pack(slot, bytes(parts.ciphertext))


# One keyring, two KEKs with their own material: k1 active, k2 decrypt (a rotation under way).
TWO_KEKS = KEYRING.with_entry(cse.LocalKey("k2", os.urandom(32), cse.KeyState.DECRYPT))


@pytest.mark.parametrize(("sealed_under", "relabelled_to"), [("k1", "k2"), ("k2", "k1")])
def test_key_slot_relabelled_to_another_kek_of_the_same_keyring_is_refused(
    sealed_under: str, relabelled_to: str
) -> None:
    """Both KEKs exist and open envelopes, so the lookup succeeds (no ``UnknownKey``): the
    wrap made under one KEK must not open under the other."""
    sealer = TWO_KEKS.with_state(sealed_under, cse.KeyState.ACTIVE)
    envelope = cse.seal("relabel me", key=KEY, keyring=sealer)
    forged = _relabelled(envelope, relabelled_to)
    assert cse.inspect(forged).kek_id == relabelled_to
    for reader in (TWO_KEKS, sealer):  # whichever KEK is active at the reader
        assert cse.unseal(envelope, keyring=reader, key=KEY) == "relabel me"
        with pytest.raises(cse.IntegrityError, match=repr(relabelled_to)):
            cse.unseal(forged, keyring=reader, key=KEY)
        with pytest.raises(cse.IntegrityError):
            cse.unseal(forged, keyring=reader)  # offline decode too


def test_key_slot_relabelled_to_another_id_of_the_same_key_material_is_refused() -> None:
    """The same material listed under two ids (a key imported again under a new name): only
    the KEK id bound into the wrapping key tells the slots apart."""
    material = os.urandom(32)
    aliased = cse.Keyring(
        [
            cse.LocalKey("k1", material, cse.KeyState.ACTIVE),
            cse.LocalKey("k1-copy", material, cse.KeyState.DECRYPT),
        ]
    )
    envelope = cse.seal("relabel me", key=KEY, keyring=aliased)
    assert cse.unseal(envelope, keyring=aliased, key=KEY) == "relabel me"
    with pytest.raises(cse.IntegrityError, match="'k1-copy'"):
        cse.unseal(_relabelled(envelope, "k1-copy"), keyring=aliased, key=KEY)


ENVELOPES = st.sampled_from(list(SEALED.values()))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_raise_only_envelope_errors(data: bytes) -> None:
    for candidate in (data, b"\xe5CSE\x01" + data, b"\xe5CSE\x01" + len(data).to_bytes(2) + data):
        with pytest.raises(cse.EnvelopeError):
            cse.unseal(candidate, keyring=KEYRING, key=KEY)
        with contextlib.suppress(cse.EnvelopeError):
            cse.inspect(candidate)


@settings(max_examples=2000, deadline=None)
@given(
    envelope=ENVELOPES,
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 3000),
    tail=st.binary(max_size=32),
)
def test_fuzz_mutated_envelopes_raise_only_envelope_errors(
    envelope: bytes, edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    changed = bytearray(envelope)
    for position, value in edits:
        changed[position % len(changed)] = value
    candidate = bytes(changed[:cut]) + tail
    if candidate == envelope:
        return
    with pytest.raises(cse.EnvelopeError):
        cse.unseal(candidate, keyring=KEYRING, key=KEY)


def test_a_dek_that_unwraps_but_misses_the_commitment_is_refused_before_decryption() -> None:
    parts = unpack(SEALED["compressible"])
    header = parts.header
    wrong = KEYRING.active.wrap(
        os.urandom(32), salt=header.salt, associated_data=associated_data(header)
    )
    forged = pack(
        header.with_slot(wrap_method=header.wrap_method, kek_id="k1", wrap_body=wrong),
        bytes(parts.ciphertext),
    )
    with pytest.raises(cse.IntegrityError, match="commitment"):
        cse.unseal(forged, keyring=KEYRING, key=KEY)
