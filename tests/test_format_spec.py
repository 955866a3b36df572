"""docs/format.md is normative: rebuild a published vector from the page alone.

The layout table is parsed from the document and packed field by field; the cryptography is
written here again with PyCA primitives directly, from the formulas on the page. Nothing of the
project's own codec is used, so a drift between code, vectors and page fails this test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from support.paths import ROOT

SPEC = (ROOT / "docs" / "format.md").read_text()
ENCODINGS = {"uint8": ">B", "uint16": ">H", "uint32": ">I", "uint64": ">Q"}


def layout() -> list[dict[str, str]]:
    block = SPEC.split("<!-- layout:start -->")[1].split("<!-- layout:end -->")[0]
    rows = [line for line in block.strip().splitlines() if line.startswith("|")]
    names = [cell.strip() for cell in rows[0].strip("|").split("|")]
    return [
        dict(zip(names, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
        for row in rows[2:]
    ]


def label(kind: str) -> bytes:
    match = re.search(rf'"(celery-s3-envelope/v1/{kind})" \|\| 0x00', SPEC)
    assert match, f"the spec names the {kind} label"
    return match.group(1).encode() + b"\x00"


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def test_layout_table_rebuilds_a_vector() -> None:
    document = json.loads((ROOT / "tests" / "vectors" / "valid.json").read_text())
    case = next(c for c in document["vectors"] if c["description"].startswith("short text"))
    kek_entry = next(k for k in document["keyring"]["keys"] if k["id"] == case["kek_id"])
    kek = base64.b64decode(kek_entry["key"])
    dek, salt = bytes.fromhex(case["dek_hex"]), bytes.fromhex(case["salt_hex"])
    plaintext = case["text"].encode()
    suite = 1
    okm = hkdf(dek, salt, label("content") + bytes((suite,)), 76)
    content_key, nonce, commitment = okm[:32], okm[32:44], okm[44:]

    key = case["key"].encode()
    kek_id = case["kek_id"].encode()
    values: dict[str, int | bytes] = {
        "magic": bytes.fromhex("E5435345"),
        "version": 1,
        "suite": suite,
        "payload_kind": 1,
        "compression": 0,
        "payload_size": len(plaintext),
        "salt": salt,
        "commitment": commitment,
        "key_length": len(key),
        "key": key,
        "wrap_method": 1,
        "kek_id_length": len(kek_id),
        "kek_id": kek_id,
    }

    def field_bytes(row: dict[str, str]) -> bytes:
        value = values[row["field"]]
        if row["encoding"] in ENCODINGS:
            return struct.pack(ENCODINGS[row["encoding"]], value)
        assert isinstance(value, bytes)
        size = row["size"]
        if size.isdigit():
            assert len(value) == int(size), row["field"]
        return value

    rows = layout()
    assert [r["part"] for r in rows[:3]] == ["preamble"] * 3
    sealed = b"".join(
        field_bytes(r) for r in rows if r["part"] == "sealed" and r["field"] != "dictionary_id"
    )
    aad = b"".join(field_bytes(r) for r in rows if r["field"] in ("magic", "version")) + sealed
    info = label("wrap") + bytes((1, len(kek_id))) + kek_id + hashlib.sha256(aad).digest()
    values["wrap_body"] = aes_key_wrap(hkdf(kek, salt, info, 32), dek)
    slot = b"".join(field_bytes(r) for r in rows if r["part"] == "slot")
    payload = AESGCM(content_key).encrypt(nonce, plaintext, aad)
    values["header_length"] = 7 + len(sealed) + len(slot)
    preamble = b"".join(field_bytes(r) for r in rows if r["part"] == "preamble")
    assert (preamble + sealed + slot + payload).hex() == case["envelope_hex"]


def test_documented_overhead_matches_the_code() -> None:
    import celery_s3_envelope as cse

    keyring = cse.Keyring.generate("k1")
    key = "celery-task-meta-" + "0" * 36
    envelope = cse.seal("", key=key, keyring=keyring)
    header = cse.inspect(envelope)
    assert "header is 165 bytes" in SPEC and "overhead (header and tag) 181 bytes" in SPEC
    assert header.header_size == 110 + len(key) + len("k1") == 165
    assert len(envelope) == 181
