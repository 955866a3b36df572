"""Round trips and the promises users rely on: types, sizes, no plaintext in the envelope."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import celery_s3_envelope as cse
from celery_s3_envelope.envelope import Compression
from celery_s3_envelope.pipeline import Pipeline

KEY = "celery-task-meta-7d3c2b1a-0000-4000-8000-000000000001"
KEYRING = cse.Keyring.generate("k1")

VALUES: list[str | bytes] = [
    "",
    b"",
    "a",
    b"\x00",
    "x" * 1024,
    os.urandom(1024),
    b"\x80\xff\xfe\xc0\xc1" * 200,  # never valid UTF-8
    "A" * (1 << 20),
    os.urandom(1 << 20),
    "".join(chr(cp) for cp in (0x41, 0xE9, 0x4E2D, 0x1F600, 0x2A6D6, 0x31350, 0xE0041, 0xFFFFD)),
    "".join(chr(plane << 16 | 0x41) for plane in range(17)),  # one code point from every plane
    "\ud800 lone surrogates \udfff",
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"{type(v).__name__}-{len(v)}")
def test_round_trip_keeps_value_and_type(value: str | bytes) -> None:
    envelope = cse.seal(value, key=KEY, keyring=KEYRING)
    opened = cse.unseal(envelope, keyring=KEYRING, key=KEY)
    assert opened == value
    assert type(opened) is type(value)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.text(), st.binary()), key=st.text(min_size=0, max_size=200))
def test_round_trip_property(value: str | bytes, key: str) -> None:
    key = key.encode("utf-8", "replace").decode("utf-8", "replace")  # S3 keys are valid UTF-8
    envelope = cse.seal(value, key=key, keyring=KEYRING)
    assert cse.unseal(envelope, keyring=KEYRING, key=key) == value


def test_every_result_gets_a_fresh_data_key() -> None:
    first = cse.seal("same", key=KEY, keyring=KEYRING)
    second = cse.seal("same", key=KEY, keyring=KEYRING)
    assert first != second
    assert cse.inspect(first).salt != cse.inspect(second).salt


@pytest.mark.parametrize(
    "value",
    [
        json.dumps({"status": "SUCCESS", "result": {"ssn": "123-45-6789"}}) * 40,  # compressible
        "SECRET-" + os.urandom(600).hex(),  # incompressible
        b"SECRET-" + os.urandom(2048),
    ],
    ids=["compressible", "incompressible-text", "incompressible-bytes"],
)
def test_plaintext_never_appears_in_the_envelope(value: str | bytes) -> None:
    raw = value.encode() if isinstance(value, str) else value
    envelope = cse.seal(value, key=KEY, keyring=KEYRING)
    for start in range(0, len(raw) - 16, 16):
        assert raw[start : start + 16] not in envelope
    assert b"SECRET" not in envelope and b"123-45-6789" not in envelope


def test_compression_skips_small_and_incompressible_values() -> None:
    small = cse.inspect(cse.seal("x" * 100, key=KEY, keyring=KEYRING))
    large = cse.inspect(cse.seal("x" * 1000, key=KEY, keyring=KEYRING))
    noise = cse.inspect(cse.seal(os.urandom(4096), key=KEY, keyring=KEYRING))
    assert small.compression is Compression.NONE
    assert large.compression is Compression.ZSTD
    assert noise.compression is Compression.NONE


def test_compressible_results_shrink() -> None:
    result = json.dumps({"status": "SUCCESS", "result": [{"id": i, "ok": True} for i in range(50)]})
    envelope = cse.seal(result, key=KEY, keyring=KEYRING)
    assert len(envelope) < len(result) / 2


def test_compression_level_and_threshold_are_configurable() -> None:
    pipeline = Pipeline(compression_level=19, compression_min_size=10_000)
    header = cse.inspect(pipeline.seal("y" * 5000, key=KEY, keyring=KEYRING))
    assert header.compression is Compression.NONE
    with pytest.raises(ValueError, match="level"):
        Pipeline(compression_level=40)


def test_seal_refuses_values_that_are_not_str_or_bytes() -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        cse.seal({"a": 1}, key=KEY, keyring=KEYRING)  # type: ignore[arg-type]


def test_seal_refuses_values_over_the_maximum() -> None:
    with pytest.raises(cse.SizeLimitExceeded):
        Pipeline(max_size=1000).seal("z" * 1001, key=KEY, keyring=KEYRING)


def test_inspect_needs_no_key_and_reads_a_header_prefix() -> None:
    envelope = cse.seal("v" * 5000, key=KEY, keyring=KEYRING)
    header = cse.inspect(envelope)
    assert (header.version, header.kek_id, header.key, header.payload_size) == (1, "k1", KEY, 5000)
    assert cse.inspect(envelope[: header.header_size]) == header
    assert "salt" not in repr(header) and "wrap_body" not in repr(header)


def test_unseal_uses_any_non_retired_key_and_seal_the_active_one() -> None:
    old = cse.seal("old", key=KEY, keyring=KEYRING)
    rotated = KEYRING.with_entry(
        cse.LocalKey("k2", os.urandom(32), cse.KeyState.DECRYPT), activate=True
    )
    assert rotated.active.id == "k2"
    assert cse.unseal(old, keyring=rotated, key=KEY) == "old"
    assert cse.inspect(cse.seal("new", key=KEY, keyring=rotated)).kek_id == "k2"
