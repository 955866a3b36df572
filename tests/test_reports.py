"""What the bulk reports say, read as an operator reads them: a dry run says what it *would* do,
a bucket full of plaintext is summarised rather than listed a line a key, and a compression
ratio says what it is a ratio of (docs/cli.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.store import S3Store
from support.cli import invoke
from support.s3 import S3Endpoint

PREFIX = "results/"


@pytest.fixture
def s3_args(s3_endpoint: S3Endpoint, store: S3Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    return [
        "--bucket", store.bucket, "--prefix", PREFIX,
        "--endpoint-url", s3_endpoint.endpoint_url, "--region", s3_endpoint.region,
    ]  # fmt: skip


def test_a_dry_run_says_would(
    store: S3Store, keyring: cse.Keyring, both: cse.Keyring, tmp_path: Path, s3_args: list[str]
) -> None:
    key = f"{PREFIX}celery-task-meta-1"
    store.put(key, cse.seal("v", key=key, keyring=keyring))
    path = tmp_path / "both.json"
    both.to_file(path)
    result = invoke(envelope, "rotate", "--dry-run", "--keyring", path, *s3_args)
    assert result.exit_code == 0, result.output
    assert "would rewrap" in result.stdout and "  rewrapped" not in result.stdout
    as_json = invoke(envelope, "rotate", "--dry-run", "--json", "--keyring", path, *s3_args)
    document = json.loads(as_json.stdout)
    assert document["dry_run"] is True and document["rewrapped"] == 1  # the field keeps its name


def test_scan_summarises_plaintext_and_lists_it_on_request(
    store: S3Store, s3_args: list[str]
) -> None:
    keys = [f"{PREFIX}celery-task-meta-{n:02d}" for n in range(12)]
    for key in keys:
        store.put(key, b'{"status": "SUCCESS"}')
    short = invoke(envelope, "scan", *s3_args)
    assert short.exit_code == 3
    lines = [line for line in short.stderr.splitlines() if line.startswith("Plaintext:")]
    assert lines[:10] == [f"Plaintext: {key}" for key in keys[:10]]
    assert lines[10:] == [
        "Plaintext: ... and 2 more (--list-plaintext shows the first 100; --json too)"
    ]
    full = invoke(envelope, "scan", "--list-plaintext", *s3_args)
    lines = [line for line in full.stderr.splitlines() if line.startswith("Plaintext:")]
    assert lines == [f"Plaintext: {key}" for key in keys]


def test_the_compression_ratio_names_what_it_is_of(tmp_path: Path, keyring: cse.Keyring) -> None:
    path = tmp_path / "r.bin"
    path.write_bytes(cse.seal(json.dumps(["A01"] * 400), key="k", keyring=keyring))
    row = invoke(envelope, "inspect", path).stdout.splitlines()[1]
    assert "zstd, " in row and "% of original" in row
