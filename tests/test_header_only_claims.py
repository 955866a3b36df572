"""A header proves nothing: anyone can write a valid header in front of plaintext. ``inspect``
and ``scan`` judge *sealed* by the header alone and say so; ``scan --verify`` (and ``decode``)
open the envelope and refuse the forgery (docs/security.md, docs/cli.md)."""

from __future__ import annotations

import json

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.envelope import unpack
from celery_s3_envelope.store import S3Store
from support.apps import MakeApp
from support.cli import invoke

KEY = "results/celery-task-meta-forged"
PLAINTEXT = b'{"status": "SUCCESS", "result": "Zo\\u00eb, in clear"}'


def forged(keyring: cse.Keyring) -> bytes:
    """A real header (from an envelope of the same key), then plaintext where the payload goes."""
    real = cse.seal("x" * len(PLAINTEXT), key=KEY, keyring=keyring)
    header_size = unpack(real, header_only=True).header.header_size
    return real[:header_size] + PLAINTEXT + bytes(16)


def test_inspect_and_scan_say_sealed_means_header_only_and_verify_refuses(
    make_app: MakeApp, store: S3Store, keyring: cse.Keyring
) -> None:
    store.put(KEY, forged(keyring))
    app = make_app(s3_base_path="results/")
    inspected = invoke(envelope, "inspect", "--json", app=app)
    record = json.loads(inspected.stdout)
    assert record["sealed"] is True and record["authenticated"] is False
    table = invoke(envelope, "inspect", app=app)
    assert "headers only, not authenticated" in table.stderr
    scanned = invoke(envelope, "scan", app=app)
    assert scanned.exit_code == 0 and "not authenticated (--verify" in scanned.stdout
    assert json.loads(invoke(envelope, "scan", "--json", app=app).stdout)["authenticated"] is False
    verified = invoke(envelope, "scan", "--verify", "--json", app=app)
    document = json.loads(verified.stdout)
    assert verified.exit_code == 1 and document["authenticated"] is True
    assert document["verify"]["failed"] == 1
    assert invoke(envelope, "decode", f"s3://{store.bucket}/{KEY}", app=app).exit_code == 1
