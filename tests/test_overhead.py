"""Header overhead: printed for the record (docs/format.md quotes it) and held to its target."""

from __future__ import annotations

import uuid

import pytest

import celery_s3_envelope as cse


@pytest.mark.parametrize("kek_id", ["k1", "2026-11"])
@pytest.mark.parametrize("base_path", ["", "results/prod/"])
def test_header_overhead_for_a_local_kek(kek_id: str, base_path: str) -> None:
    keyring = cse.Keyring.generate(kek_id)
    key = f"{base_path}celery-task-meta-{uuid.uuid4()}"
    envelope = cse.seal("", key=key, keyring=keyring)
    header = cse.inspect(envelope)
    overhead = len(envelope)  # empty value: everything is overhead (header and GCM tag)
    print(
        f"\nkey {len(key)} bytes, kek id {len(kek_id)} bytes: header {header.header_size} bytes, "
        f"overhead with tag {overhead} bytes = 128 + key {overhead - 128 - len(key):+d}"
    )
    assert header.header_size == 110 + len(key) + len(kek_id)
    assert overhead == header.header_size + 16
    # Target: at most 128 bytes plus the object key's length, met for KEK ids up to 2 bytes;
    # the header alone stays within it for KEK ids up to 18 bytes.
    assert header.header_size <= 128 + len(key)
    if len(kek_id) <= 2:
        assert overhead <= 128 + len(key)
