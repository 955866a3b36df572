"""Strings read from an object, a header or a key name can be forged by anyone who can write the
bucket: every command shows them with control characters escaped, so an escape sequence cannot
rewrite the operator's terminal (over the audit's "plaintext" line, say); ``--json`` stays valid
JSON that round-trips the exact string (docs/security.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from celery import Celery
from click.testing import Result

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.store import S3Store
from support.apps import MakeApp
from support.cli import invoke

# A KEK id and object keys as a forger would write them: clear the line, move the cursor, recolour,
# reverse the text (C0 ESC and CR, C1 CSI, DEL, a bidi override, a line separator).
HOSTILE_ID = "k1\x1b[2K\rPlaintext: none\x07"
HOSTILE_KEY = "results/celery-task-meta-\x9b2J\u202etxt.exe\x7f\u2028x"
FILE_KEY = "results/celery-task-meta-\x1b]0;pwned\x07\r\n" + HOSTILE_KEY
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def assert_safe(result: Result) -> None:
    for stream in (result.stdout, result.stderr):
        assert not RAW.findall(stream), RAW.findall(stream)


@pytest.fixture
def hostile_keyring() -> cse.Keyring:
    return cse.Keyring([cse.LocalKey(HOSTILE_ID, b"\x05" * 32, cse.KeyState.ACTIVE)])


@pytest.fixture
def hostile_file(tmp_path: Path, hostile_keyring: cse.Keyring) -> Path:
    path = tmp_path / "forged.bin"
    path.write_bytes(cse.seal("value\x1b[31m red", key=FILE_KEY, keyring=hostile_keyring))
    return path


def test_inspect_and_decode_of_a_file_escape_header_strings(
    hostile_file: Path, hostile_keyring: cse.Keyring, tmp_path: Path
) -> None:
    keyring_path = tmp_path / "k.json"
    hostile_keyring.to_file(keyring_path)
    for args in (
        ["inspect", hostile_file],
        ["inspect", hostile_file, hostile_file],
        ["decode", "--meta", hostile_file, "--keyring", keyring_path],
        ["decode", "--meta", "--raw", hostile_file, "--keyring", keyring_path],
    ):
        result = invoke(envelope, *args)
        assert result.exit_code == 0, result.output
        if "--raw" in args:  # --raw writes the value byte for byte; the header goes to stderr
            assert not RAW.findall(result.stderr)
            continue
        assert_safe(result)
        assert "\\x1b[2K\\x0dPlaintext: none\\x07" in result.output  # shown, escaped
    listed = invoke(envelope, "inspect", "--json", hostile_file)
    record = json.loads(listed.stdout)
    assert record["kek_id"] == HOSTILE_ID and record["key"] == FILE_KEY  # exact, once parsed
    assert_safe(listed)
    decoded = invoke(
        envelope, "decode", "--json", "--meta", hostile_file, "--keyring", keyring_path
    )
    assert json.loads(decoded.stdout)["meta"]["kek_id"] == HOSTILE_ID
    assert_safe(decoded)


def test_failures_quote_hostile_names_escaped(tmp_path: Path, keyring_file: Path) -> None:
    bad = tmp_path / "not\x1b[8m-an-envelope\u202e.bin"
    bad.write_bytes(b"plain")
    result = invoke(envelope, "decode", bad, "--keyring", keyring_file)
    assert result.exit_code == 3 and "not an envelope" in result.stderr  # plaintext found
    assert_safe(result)
    undecodable = tmp_path / "obj-\udc9b31m-\udcff.bin"  # a file name that is not UTF-8
    undecodable.write_bytes(b"plain")
    for args in (["inspect", undecodable], ["inspect", "--json", undecodable]):
        listed = invoke(envelope, *args)
        assert_safe(listed)
        assert "\\x9b31m-\\xff" in listed.stderr or "\\udc9b" in listed.stdout


def test_scan_rotate_and_inspect_of_a_bucket_escape_keys_and_ids(
    make_app: MakeApp, store: S3Store, keyring: cse.Keyring, hostile_keyring: cse.Keyring
) -> None:
    app: Celery = make_app(s3_base_path="results/")
    store.put(HOSTILE_KEY, cse.seal("x", key=HOSTILE_KEY, keyring=hostile_keyring))
    plain = "results/celery-task-meta-\u202eplain\x9b"
    store.put(plain, b'{"status": "SUCCESS"}')
    scanned = invoke(envelope, "scan", app=app)
    assert scanned.exit_code == 3  # plaintext found
    assert_safe(scanned)
    assert "\\x1b[2K" in scanned.stdout and "Plaintext: results/celery-task-meta-\\u202e" in (
        scanned.stderr
    )
    as_json = invoke(envelope, "scan", "--json", app=app)
    document = json.loads(as_json.stdout)
    assert document["plaintext_keys"] == [plain]
    assert [g["kek_id"] for g in document["sealed_by_kek"]] == [HOSTILE_ID]
    rotated = invoke(envelope, "rotate", app=app)  # the app's keyring lacks the hostile KEK
    assert rotated.exit_code == 1
    assert_safe(rotated)
    listed = invoke(envelope, "inspect", app=app)
    assert_safe(listed)
