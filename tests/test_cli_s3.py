"""The command line against S3 (moto's server from conftest): ``s3://`` sources, prefixes, the
Celery sub-command with the app's configuration, and a keyring edited between two backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import Result

from celery_s3_envelope import Keyring, seal
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.cli.sources import Source, read_header
from celery_s3_envelope.ops.context import Context
from celery_s3_envelope.ops.scan import HEADER_PROBE
from celery_s3_envelope.store import S3Store
from support.apps import backend_of
from support.cli import invoke
from support.cli_app import CONFIG_VARIABLE
from support.paths import TESTS, subprocess_pythonpath
from support.s3 import S3Endpoint

BASE_PATH = "results/"
RESULT = {"patient": "Zoë Ångström", "codes": ["A01"] * 40}
SECRET = "Zoë Ångström"


@pytest.fixture
def s3_args(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Standalone mode: the endpoint as options, credentials from boto3's chain (env)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_access_key)
    return ["--endpoint-url", s3_endpoint.endpoint_url, "--region", s3_endpoint.region]


@pytest.fixture
def app(make_app: Callable[..., Celery], keyring_file: Path) -> Celery:
    return make_app(s3_base_path=BASE_PATH, envelope_keyring=str(keyring_file))


@pytest.fixture
def app_backend(app: Celery) -> EnvelopeS3Backend:
    return backend_of(app)


def store_result(backend: EnvelopeS3Backend, value: Any = RESULT, state: str = "SUCCESS") -> str:
    """A task result stored through the backend; returns its full object key."""
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, value, state)
    return backend.base_path + backend.get_key_for_task(task_id).decode()


def run(*args: str | os.PathLike[str], app: Celery | None = None) -> Result:
    """Standalone, or (``app``) as ``celery -A app envelope ...`` hands the command its app."""
    return invoke(envelope, *args, app=app)


def only_error(result: Result, status: int = 1) -> str:
    """Exit ``status`` (docs/cli.md's table), one stderr line, no traceback, no plaintext."""
    assert result.exit_code == status, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output and SECRET not in result.output
    return lines[0]


# -- s3:// sources, standalone ---------------------------------------------------------------


def test_decode_s3_object_and_downloaded_file_equal_the_backends_get(
    app_backend: EnvelopeS3Backend,
    bucket: str,
    store: S3Store,
    keyring_file: Path,
    s3_args: list[str],
    tmp_path: Path,
) -> None:
    object_key = store_result(app_backend)
    expected = app_backend.get(object_key.removeprefix(BASE_PATH))
    assert isinstance(expected, str)

    from_s3 = run(
        "decode", "--raw", f"s3://{bucket}/{object_key}", "--keyring", keyring_file, *s3_args
    )
    assert from_s3.exit_code == 0, from_s3.output
    assert from_s3.stdout_bytes == expected.encode()

    downloaded = tmp_path / "download.bin"
    downloaded.write_bytes(store.get(object_key) or b"")
    offline = run("decode", "--raw", downloaded, "--keyring", keyring_file)
    assert offline.exit_code == 0 and offline.stdout_bytes == expected.encode()
    pretty = run("decode", downloaded, "--keyring", keyring_file)
    assert json.loads(pretty.stdout)["result"] == RESULT


def test_decode_refuses_an_envelope_copied_to_another_key(
    app_backend: EnvelopeS3Backend, bucket: str, store: S3Store, keyring_file: Path,
    s3_args: list[str], tmp_path: Path,
) -> None:  # fmt: skip
    original = store_result(app_backend)
    moved = BASE_PATH + "celery-task-meta-" + str(uuid.uuid4())
    store.put(moved, store.get(original) or b"")
    line = only_error(run("decode", f"s3://{bucket}/{moved}", "--keyring", keyring_file, *s3_args))
    assert line.startswith(f"Error: s3://{bucket}/{moved}: integrity check failed: ")
    assert f"sealed for object key {original!r}" in line
    # The same bytes as a file have no trustworthy name: they open, and --meta names the key.
    copy = tmp_path / "copy.bin"
    copy.write_bytes(store.get(moved) or b"")
    result = run("decode", "--meta", copy, "--keyring", keyring_file)
    assert result.exit_code == 0 and f"sealed for  {original}" in result.stderr


def test_s3_failures_are_one_line_each(
    bucket: str, keyring_file: Path, s3_args: list[str], store: S3Store
) -> None:
    store.put("legacy/plain", json.dumps({"status": "SUCCESS", "result": SECRET}).encode())
    result = run(
        "decode",
        f"s3://{bucket}/nope",
        f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/key",
        f"s3://{bucket}/legacy/plain",
        "--keyring",
        keyring_file,
        *s3_args,
    )
    assert result.exit_code == 4 and result.stdout == ""  # no such bucket: S3 failed, the highest
    lines = result.stderr.splitlines()
    assert lines[0] == f"Error: s3://{bucket}/nope: no such object"
    assert lines[1].endswith(": no such bucket")
    assert lines[2] == f"Error: s3://{bucket}/legacy/plain: not an envelope " + (
        "(no envelope magic: plaintext or another format)"
    )
    assert SECRET not in result.output and "Traceback" not in result.output


def test_unreachable_endpoint(keyring_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    result = run(
        "inspect", "s3://bucket/key", "--endpoint-url", "http://127.0.0.1:9", "--region", "x"
    )
    line = only_error(result, status=4)
    assert line.startswith("Error: s3://bucket/key: S3 request failed: Could not connect")


def test_inspect_audits_a_prefix(
    app_backend: EnvelopeS3Backend, bucket: str, store: S3Store, s3_args: list[str]
) -> None:
    keys = sorted(store_result(app_backend) for _ in range(3))
    store.put(BASE_PATH + "zz-legacy", b'{"status": "SUCCESS", "result": "Zo\\u00eb"}')
    moved = BASE_PATH + "zz-moved"
    store.put(moved, store.get(keys[0]) or b"")
    store.put("elsewhere/not-listed", b"plaintext outside the prefix")

    result = run("inspect", "--json", f"s3://{bucket}/{BASE_PATH}", *s3_args)
    assert result.exit_code == 3  # plaintext found (and a moved envelope: 1, lower)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["source"] for r in records] == [
        f"s3://{bucket}/{k}" for k in [*keys, BASE_PATH + "zz-legacy", moved]
    ]
    assert [r["sealed"] for r in records] == [True, True, True, False, False]
    assert all(r["kek_id"] == "k1" and r["key"] == k for r, k in zip(records, keys, strict=False))
    assert "not an envelope" in records[3]["error"]
    assert "stored under" in records[4]["error"]
    assert len(result.stderr.splitlines()) == 2

    table = run("inspect", "--bucket", bucket, "--prefix", BASE_PATH, *s3_args)  # no SOURCE
    rows = table.stdout.splitlines()
    assert rows[0].split()[0] == "KEK" and len(rows) == 4
    assert all(row.startswith("k1") for row in rows[1:])
    assert table.stderr.splitlines()[-1] == "3 sealed, 2 failed"


def test_inspect_reads_headers_with_ranged_gets(
    bucket: str, store: S3Store, keyring: Keyring, s3_endpoint: S3Endpoint
) -> None:
    big = seal(os.urandom(1_000_000), key="big", keyring=keyring)
    store.put("big", big)
    context = Context()
    context._stores[bucket] = store
    head, size = read_header(context, Source(name="s3://b/big", bucket=bucket, key="big"))
    assert size == len(big) and len(head) <= HEADER_PROBE + len("big")
    assert big.startswith(head)


# -- as a Celery sub-command: the app's configuration --------------------------------------------


def test_celery_mode_takes_everything_from_the_app(
    app: Celery, app_backend: EnvelopeS3Backend, bucket: str
) -> None:
    """No --keyring, --bucket, --endpoint-url: `celery -A proj envelope ...` needs none."""
    object_key = store_result(app_backend)
    listed = run("inspect", "--json", app=app)  # no SOURCE: the app's bucket and base path
    assert listed.exit_code == 0, listed.output
    (record,) = (json.loads(line) for line in listed.stdout.splitlines())
    assert record["source"] == f"s3://{bucket}/{object_key}" and record["kek_id"] == "k1"

    decoded = run("decode", f"s3://{bucket}/{object_key}", app=app)
    assert decoded.exit_code == 0, decoded.output
    assert json.loads(decoded.stdout)["result"] == RESULT


def test_celery_mode_with_an_app_not_using_this_backend(keyring_file: Path) -> None:
    other = Celery("other", set_as_current=False)
    other.conf.result_backend = "cache+memory://"
    result = run("inspect", app=other)
    assert result.exit_code == 2  # a configuration error
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: Celery app 'other': result backend unusable: ")
    decoded = run("decode", "s3://b/k", "--keyring", keyring_file, app=other)
    assert only_error(decoded, status=2).startswith(
        "Error: s3://b/k: Celery app 'other': result backend"
    )


def test_no_credentials(bucket: str, keyring_file: Path, s3_endpoint: S3Endpoint) -> None:
    """conftest leaves no AWS credentials anywhere: boto3's chain finds none."""
    endpoint = ["--endpoint-url", s3_endpoint.endpoint_url, "--region", s3_endpoint.region]
    result = run("decode", f"s3://{bucket}/k", "--keyring", keyring_file, *endpoint)
    assert only_error(result, status=4) == (
        f"Error: s3://{bucket}/k: S3 request failed: Unable to locate credentials"
    )


def test_celery_subcommand_entry_point(
    app: Celery,
    app_backend: EnvelopeS3Backend,
    bucket: str,
    s3_endpoint: S3Endpoint,
    keyring_file: Path,
) -> None:
    """The real thing: `celery -A support.cli_app envelope inspect s3://...` in its own process, the
    command found through the `celery.commands` entry point, S3 reached with the app's
    endpoint and credentials (none in the environment)."""
    object_key = store_result(app_backend)
    config = {
        "result_backend": "s3envelope",
        "s3_base_path": BASE_PATH,
        "envelope_keyring": str(keyring_file),
        **s3_endpoint.settings(bucket),
    }
    env = {
        **os.environ,
        CONFIG_VARIABLE: json.dumps(config),
        "PYTHONPATH": subprocess_pythonpath(),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "support.cli_app", "envelope", "inspect",
        "--json", f"s3://{bucket}/{object_key}",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=TESTS,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads(done.stdout)
    assert record["sealed"] and record["key"] == object_key and record["kek_id"] == "k1"


# -- key rotation with the keys command between two backends -----------------------------------


def test_keys_add_activate_between_two_backends(
    make_app: Callable[..., Celery], bucket: str, keyring_file: Path, s3_args: list[str]
) -> None:
    def fresh_backend() -> EnvelopeS3Backend:
        backend = make_app(s3_base_path=BASE_PATH, envelope_keyring=str(keyring_file)).backend
        assert isinstance(backend, EnvelopeS3Backend)
        return backend

    before = fresh_backend()
    old_key = store_result(before, {"n": "old"})
    edit = run("keys", "add", keyring_file, "--activate")
    assert edit.exit_code == 0 and edit.stdout.startswith("added key k2 (active)")

    after = fresh_backend()  # started after the edit: seals with k2
    new_key = store_result(after, {"n": "new"})
    records = {
        json.loads(line)["key"]: json.loads(line)["kek_id"]
        for line in run("inspect", "--json", f"s3://{bucket}/", *s3_args).stdout.splitlines()
    }
    assert records == {old_key: "k1", new_key: "k2"}
    for key, value in ((old_key, "old"), (new_key, "new")):
        assert json.loads(after.get(key.removeprefix(BASE_PATH)) or "")["result"] == {"n": value}
        decoded = run("decode", f"s3://{bucket}/{key}", "--keyring", keyring_file, *s3_args)
        assert decoded.exit_code == 0 and json.loads(decoded.stdout)["result"] == {"n": value}
