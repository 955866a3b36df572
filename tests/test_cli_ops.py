"""``rotate``, ``migrate`` and ``scan`` on the command line, standalone and under ``celery``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import Result

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.kms import KmsKey, parse_kms_body
from celery_s3_envelope.store import S3Store
from support.cli import invoke
from support.keys import with_active_k2
from support.kms import kms_key_arn
from support.s3 import S3Endpoint

PREFIX = "celery/"


@pytest.fixture
def s3_args(s3_endpoint: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    return ["--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", s3_endpoint.endpoint_url]


def run(*args: str | Path, app: Celery | None = None) -> Result:
    return invoke(envelope, *args, app=app)


def rotated_keyring(tmp_path: Path, first: cse.Keyring) -> Path:
    path = tmp_path / "rotated.json"
    with_active_k2(first).to_file(path)
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


def test_scan_exits_3_on_plaintext_and_migrate_fixes_it(
    store: S3Store, keyring_file: Path, s3_args: list[str]
) -> None:
    plain = f"{PREFIX}celery-task-meta-legacy"
    store.put(plain, b'{"status": "SUCCESS", "result": "left by the stock backend"}')
    found = run("scan", *s3_args)
    assert found.exit_code == 3  # plaintext found (2 is for usage errors)
    assert plain in found.stderr and "left by the stock backend" not in found.output

    migrated = run("migrate", "--keyring", keyring_file, "--cutoff", "+1h", "--json", *s3_args)
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
    assert scanned.exit_code == 3, scanned.output  # the legacy object is plaintext
    report = json.loads(scanned.stdout)
    assert (report["sealed"], report["plaintext"]) == (1, 1)
    rotated = run("rotate", "--json", app=app)
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["current"] == 1  # the app's keyring is the target


# -- KMS KEKs ---------------------------------------------------------------------------------


def kms_slots(store: S3Store, keys: list[str]) -> list[tuple[str, bytes]]:
    """(scope, KMS blob) of each object's key slot."""
    slots = [parse_kms_body(cse.inspect(store.get(key) or b"").wrap_body) for key in keys]
    return [(scope, blob) for scope, blob, _ in slots]


def test_celery_subcommand_calls_kms_with_the_apps_settings(
    make_app: Callable[..., Celery],
    kms_endpoint: str,
    store: S3Store,
    keyring: cse.Keyring,
    tmp_path: Path,
) -> None:
    """`celery -A proj envelope rotate|migrate|scan --verify --keyring FILE`, the file naming a
    KMS KEK: KMS is reached as the backend reaches it (envelope_kms_endpoint_url and _region, the
    cache bounds, the app's credentials), not through boto3's environment, which is empty here."""
    arn = kms_key_arn(kms_endpoint)
    app = make_app(
        s3_base_path=PREFIX,
        envelope_kms_endpoint_url=kms_endpoint,
        envelope_kms_region="us-east-1",
        envelope_kms_cache_uses=0,  # one data key per envelope: shows the setting is honoured
    )
    keys = [f"{PREFIX}celery-task-meta-{i}" for i in range(4)]
    for key in keys:
        store.put(key, cse.seal(f"value of {key}", key=key, keyring=keyring))
    legacy = f"{PREFIX}celery-task-meta-legacy"
    store.put(legacy, b'{"status": "SUCCESS", "result": "value of the legacy one"}')
    path = tmp_path / "with-kms.json"
    keyring.with_entry(KmsKey("kms-1", arn, cse.KeyState.ACTIVE), activate=True).to_file(path)

    rotated = run("rotate", "--keyring", path, "--workers", "1", "--json", app=app)
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["rewrapped"] == 4
    migrated = run(
        "migrate", "--keyring", path, "--cutoff", "+1h", "--workers", "1", "--json", app=app
    )
    assert migrated.exit_code == 0, migrated.output
    assert json.loads(migrated.stdout)["sealed"] == 1

    slots = kms_slots(store, [*keys, legacy])
    assert {scope for scope, _ in slots} == {f"{store.bucket}/{PREFIX}"}
    assert len({blob for _, blob in slots}) == 5  # envelope_kms_cache_uses = 0
    scanned = run("scan", "--verify", "--keyring", path, "--json", app=app)
    assert scanned.exit_code == 0, scanned.output
    report = json.loads(scanned.stdout)
    assert report["verify"]["verified"] == 5 and report["verify"]["failed"] == 0
    assert "value of" not in scanned.output


def test_standalone_commands_call_kms_through_boto3s_environment(
    store: S3Store,
    keyring: cse.Keyring,
    tmp_path: Path,
    s3_args: list[str],
    kms_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without an app: AWS_ENDPOINT_URL_KMS and AWS_DEFAULT_REGION, as docs/cli.md says."""
    arn = kms_key_arn(kms_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", kms_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    keys = [f"{PREFIX}celery-task-meta-{i}" for i in range(2)]
    for key in keys:
        store.put(key, cse.seal(f"value of {key}", key=key, keyring=keyring))
    path = tmp_path / "with-kms.json"
    keyring.with_entry(KmsKey("kms-1", arn, cse.KeyState.ACTIVE), activate=True).to_file(path)

    rotated = run("rotate", "--keyring", path, "--json", *s3_args)
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["rewrapped"] == 2
    assert {scope for scope, _ in kms_slots(store, keys)} == {f"{store.bucket}/{PREFIX}"}
    scanned = run("scan", "--verify", "--keyring", path, "--json", *s3_args)
    assert scanned.exit_code == 0, scanned.output
    assert json.loads(scanned.stdout)["verify"]["verified"] == 2


def test_standalone_rotate_to_a_kms_kek_seals_for_the_buckets_scope(
    s3_endpoint: Any,
    kms_endpoint: str,
    bucket: str,
    store: S3Store,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    import boto3
    from click.testing import CliRunner

    from celery_s3_envelope import kms as kms_module
    from celery_s3_envelope.cli import envelope
    from celery_s3_envelope.envelope import unpack
    from celery_s3_envelope.kms import parse_kms_body

    for name, value in {  # boto3's chain: S3's credentials, which moto's KMS accepts too
        "AWS_ACCESS_KEY_ID": s3_endpoint.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_endpoint.secret_access_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(kms_module, "_default_provider", None)
    arn = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    k1 = cse.Keyring.generate("k1")
    document = k1.to_dict()
    document["keys"][0]["state"] = "decrypt"
    document["keys"].append(
        {"id": "kms-1", "kms_key_id": arn, "state": "active", "created": "2025-01-01T00:00:00Z"}
    )
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    key = "results/celery-task-meta-kms"
    store.put(key, cse.seal("v", key=key, keyring=k1))

    result = CliRunner().invoke(
        envelope,
        [
            "rotate",
            "--bucket",
            bucket,
            "--prefix",
            "results/",
            "--keyring",
            str(path),
            "--endpoint-url",
            s3_endpoint.endpoint_url,
            "--region",
            "us-east-1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    header = unpack(store.get(key) or b"").header
    assert header.kek_id == "kms-1"
    scope, _, _ = parse_kms_body(header.wrap_body)
    assert scope == f"{bucket}/results/"  # what EnvelopeS3Backend(s3_base_path="results/") uses
