"""``--distributed`` checks the workers before it sends anything: with no worker answering, or
none that has the shard task (``celery_s3_envelope.distributed`` missing from ``include``), it
fails at once with one line saying what to do, and writes no run state (docs/scale.md)."""

from __future__ import annotations

import time
from pathlib import Path

from celery_s3_envelope.cli import envelope
from celery_s3_envelope.store import S3Store
from support.cli import invoke
from support.e2e_app import make_app
from support.s3 import S3Endpoint
from support.worker import BASE_PATH, running_worker, worker_config


def run_state(store: S3Store) -> list[str]:
    return [info.key for info in store.list() if ".envelope-runs/" in info.key]


def test_no_worker_answering_fails_at_once(
    s3_endpoint: S3Endpoint, bucket: str, keyring_file: Path, store: S3Store, tmp_path: Path
) -> None:
    app = make_app(worker_config(s3_endpoint, bucket, keyring_file, tmp_path))
    started = time.monotonic()
    result = invoke(envelope, "rotate", "--distributed", "--timeout", "60", app=app)
    assert result.exit_code == 4 and time.monotonic() - started < 20, result.output
    assert "no worker of this app answered" in result.stderr and "Traceback" not in result.output
    assert run_state(store) == []


def test_workers_without_the_shard_task_say_what_to_include(
    s3_endpoint: S3Endpoint, bucket: str, keyring_file: Path, store: S3Store, tmp_path: Path
) -> None:
    with running_worker(s3_endpoint, bucket, keyring_file, tmp_path) as worker:  # no include
        store.put(f"{BASE_PATH}celery-task-meta-1", b"x")
        result = invoke(envelope, "rotate", "--distributed", "--timeout", "60", app=worker.app)
    assert result.exit_code == 4, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert "add 'celery_s3_envelope.distributed' to the app's include" in line
    assert run_state(store) == []
