"""One exit-status table for every command (docs/cli.md): 1 damaged or failed objects, 2 usage or
configuration errors, 3 plaintext found, 4 S3 or KMS failures, 130 interrupted. Each common
operator mistake is one line naming the cause, never a traceback."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import Result

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.store import S3Store
from support.cli import invoke
from support.s3 import S3Endpoint

PREFIX = "results/"
COMMANDS = [
    ["scan"],
    ["rotate"],
    ["migrate", "--cutoff", "now"],
    ["inspect"],
    ["decode"],
]


def one_line(result: Result, status: int, *words: str) -> str:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def credentials(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    return ["--endpoint-url", s3_endpoint.endpoint_url, "--region", s3_endpoint.region]


def target(command: list[str], bucket: str, prefix: str = PREFIX) -> list[str]:
    """The command aimed at ``bucket``/``prefix``, as each command takes it."""
    if command[0] in ("inspect", "decode"):
        return [*command, f"s3://{bucket}/{prefix}"]
    return [*command, "--bucket", bucket, "--prefix", prefix]


@pytest.fixture
def keyring_args(keyring_file: Path) -> list[str]:
    return ["--keyring", str(keyring_file)]


def with_keyring(command: list[str], keyring_args: list[str]) -> list[str]:
    return [*command, *keyring_args] if command[0] in ("rotate", "migrate", "decode") else command


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_bucket_that_does_not_exist(
    command: list[str], credentials: list[str], keyring_args: list[str]
) -> None:
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    args = with_keyring(target(command, missing), keyring_args)
    one_line(invoke(envelope, *args, *credentials), 4, "no such bucket")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_no_credentials(
    command: list[str], s3_endpoint: S3Endpoint, bucket: str, keyring_args: list[str]
) -> None:
    """conftest leaves no AWS credentials anywhere: boto3's chain finds none."""
    endpoint = ["--endpoint-url", s3_endpoint.endpoint_url, "--region", s3_endpoint.region]
    args = with_keyring(target(command, bucket), keyring_args)
    one_line(invoke(envelope, *args, *endpoint), 4, "credentials")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_nothing_listening_at_the_endpoint(
    command: list[str], keyring_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    endpoint = ["--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1"]
    args = with_keyring(target(command, "bucket"), keyring_args)
    one_line(invoke(envelope, *args, *endpoint), 4, "127.0.0.1:9")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_endpoint_that_is_not_a_url(command: list[str], keyring_args: list[str]) -> None:
    args = with_keyring(target(command, "bucket"), keyring_args)
    result = invoke(envelope, *args, "--endpoint-url", "notaurl")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'notaurl' is not an http(s):// URL" in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_mistyped_prefix_is_not_a_silent_pass(
    command: list[str], credentials: list[str], keyring_args: list[str], store: S3Store
) -> None:
    store.put(f"{PREFIX}celery-task-meta-1", b"x")  # something under the right prefix
    args = with_keyring(target(command, store.bucket, "resluts/"), keyring_args)
    one_line(invoke(envelope, *args, *credentials), 2, "resluts/")


def test_the_four_findings_are_four_statuses(
    credentials: list[str], store: S3Store, keyring: cse.Keyring, keyring_args: list[str]
) -> None:
    """scan: plaintext found (3) is not damaged (1) is not a usage error (2) is not S3 (4)."""
    args = ["--bucket", store.bucket, "--prefix", PREFIX, *credentials]
    sealed = f"{PREFIX}celery-task-meta-sealed"
    store.put(sealed, cse.seal("ok", key=sealed, keyring=keyring))
    assert invoke(envelope, "scan", *args).exit_code == 0
    damaged = f"{PREFIX}celery-task-meta-damaged"
    store.put(damaged, cse.seal("ok", key=sealed, keyring=keyring))  # moved: refused on verify
    assert invoke(envelope, "scan", "--verify", *keyring_args, *args).exit_code == 1
    store.put(f"{PREFIX}celery-task-meta-plain", b'{"status": "SUCCESS"}')
    assert invoke(envelope, "scan", *args).exit_code == 3
    assert invoke(envelope, "scan", "--workers", "0", *args).exit_code == 2
    missing = ["--bucket", f"no-such-bucket-{uuid.uuid4().hex[:8]}", *credentials]
    assert invoke(envelope, "scan", *missing).exit_code == 4


def test_profile_gives_the_credentials(
    s3_endpoint: S3Endpoint, store: S3Store, keyring: cse.Keyring, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``--profile NAME`` reads credentials from the AWS config files, as the AWS CLI does."""
    sealed = f"{PREFIX}celery-task-meta-1"
    store.put(sealed, cse.seal("ok", key=sealed, keyring=keyring))
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[results-audit]\n"
        f"aws_access_key_id = {s3_endpoint.access_key_id}\n"
        f"aws_secret_access_key = {s3_endpoint.secret_access_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    args = ["scan", "--bucket", store.bucket, "--prefix", PREFIX]
    args += ["--endpoint-url", s3_endpoint.endpoint_url, "--region", s3_endpoint.region]
    assert invoke(envelope, *args).exit_code == 4  # no credentials without it
    result = invoke(envelope, *args, "--profile", "results-audit")
    assert result.exit_code == 0, result.output
