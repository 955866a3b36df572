"""``rotate``, ``migrate`` and ``scan`` on the command line, standalone and under ``celery``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

import celery_s3_envelope as cse
from backend_helpers import S3Endpoint
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.store import S3Store

PREFIX = "celery/"


@pytest.fixture
def s3_args(s3_endpoint: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    return ["--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", s3_endpoint.endpoint_url]


def run(*args: str | Path, app: Celery | None = None) -> Result:
    obj = None if app is None else CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(envelope, [str(a) for a in args], obj=obj)


def rotated_keyring(tmp_path: Path, first: cse.Keyring) -> Path:
    path = tmp_path / "rotated.json"
    first.with_entry(
        cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE), activate=True
    ).to_file(path)
    return path


def test_rotate_then_scan_with_verify(
    store: S3Store, keyring: cse.Keyring, tmp_path: Path, s3_args: list[str]
) -> None:
    keys = [f"{PREFIX}celery-task-meta-{i}" for i in range(12)]
    for key in keys:
        store.put(key, cse.seal(f"value of {key}", key=key, keyring=keyring))
    path = rotated_keyring(tmp_path, keyring)

    dry = run("rotate", "--keyring", path, "--dry-run", "--json", *s3_args)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["rewrapped"] == 12 and json.loads(dry.stdout)["dry_run"]

    done = run("rotate", "--keyring", path, "--verify", *s3_args)
    assert done.exit_code == 0, done.output
    assert "rewrapped" in done.stdout and "-> KEK k2" in done.stdout

    scanned = run("scan", "--keyring", path, "--verify", "--json", *s3_args)
    assert scanned.exit_code == 0, scanned.output
    report = json.loads(scanned.stdout)
    assert (
        report["sealed_by_kek"][0]["kek_id"] == "k2" and report["sealed_by_kek"][0]["objects"] == 12
    )
    assert report["verify"]["verified"] == 12 and report["verify"]["failed"] == 0
    assert "value of" not in scanned.output  # the scan never shows a result


def test_rotate_exit_status_and_one_line_per_failure(
    store: S3Store, keyring: cse.Keyring, tmp_path: Path, s3_args: list[str]
) -> None:
    good, bad = f"{PREFIX}celery-task-meta-good", f"{PREFIX}celery-task-meta-bad"
    store.put(good, cse.seal("ok", key=good, keyring=keyring))
    store.put(bad, cse.seal("secret payload", key=good, keyring=keyring))  # copied onto bad
    result = run("rotate", "--keyring", rotated_keyring(tmp_path, keyring), *s3_args)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and bad in errors[0] and "IntegrityError" in errors[0]
    assert "Traceback" not in result.output and "secret payload" not in result.output


def test_scan_exits_2_on_plaintext_and_migrate_fixes_it(
    store: S3Store, keyring_file: Path, s3_args: list[str]
) -> None:
    plain = f"{PREFIX}celery-task-meta-legacy"
    store.put(plain, b'{"status": "SUCCESS", "result": "left by the stock backend"}')
    found = run("scan", *s3_args)
    assert found.exit_code == 2
    assert plain in found.stderr and "left by the stock backend" not in found.output

    migrated = run("migrate", "--keyring", keyring_file, "--json", *s3_args)
    assert migrated.exit_code == 0, migrated.output
    assert json.loads(migrated.stdout)["sealed"] == 1

    clean = run("scan", *s3_args)
    assert clean.exit_code == 0, clean.output
    assert "plaintext" in clean.stdout


def test_celery_subcommand_uses_the_apps_settings(
    make_app: Callable[..., Celery], keyring_file: Path, store: S3Store, keyring: cse.Keyring
) -> None:
    app = make_app(s3_base_path=PREFIX, envelope_keyring=str(keyring_file))
    app.backend.store_result("task-1", {"n": 1}, "SUCCESS")
    store.put(f"{PREFIX}celery-task-meta-old", b'{"status": "SUCCESS"}')
    scanned = run("scan", "--json", app=app)
    assert scanned.exit_code == 2, scanned.output  # the legacy object is plaintext
    report = json.loads(scanned.stdout)
    assert (report["sealed"], report["plaintext"]) == (1, 1)
    rotated = run("rotate", "--json", app=app)
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["current"] == 1  # the app's keyring is the target
