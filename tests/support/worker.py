"""Run a real ``celery -A support.e2e_app worker`` subprocess: the one worker runner of the tests.

The broker is kombu's filesystem transport in the test's ``tmp_path`` (see ``support.broker`` for
the one fix it needs); results go through ``EnvelopeS3Backend`` to the session's S3 endpoint. Every
wait is bounded, and the worker's whole process group is killed on every exit path. Callers choose
the pool, the concurrency, task events (``events``), Celery's ``--quiet`` and extra settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from support.e2e_app import CALLBACK_LOG_SETTING, CONFIG_VARIABLE, make_app
from support.paths import TESTS, subprocess_pythonpath
from support.s3 import S3Endpoint

READY_TIMEOUT = 60.0
RESULT_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
BASE_PATH = "e2e/results/"
"""The worker app's ``s3_base_path``: every result the worker stores is under it."""
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\S+) ")
"""The start of a record in the worker's log (``worker_log_format``), with its logger's name."""


def worker_config(
    endpoint: S3Endpoint, bucket: str, keyring_path: Path, tmp: Path
) -> dict[str, Any]:
    queue, processed, control = tmp / "queue", tmp / "processed", tmp / "control"
    for folder in (queue, processed, control):
        folder.mkdir()
    log_format = "%(asctime)s %(name)s %(levelname)s %(processName)s: %(message)s"
    return {
        "broker_url": "filesystem://",
        "broker_transport": "support.broker:Transport",  # kombu's, with an atomic publish
        "broker_transport_options": {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "control_folder": str(control),
            "store_processed": False,
            "polling_interval": 0.05,
        },
        "result_backend": "s3envelope",
        "result_extended": True,
        "envelope_keyring": str(keyring_path),
        **endpoint.settings(bucket),
        "s3_base_path": BASE_PATH,
        "worker_log_format": log_format,
        "worker_task_log_format": log_format,
        "worker_prefetch_multiplier": 4,
        CALLBACK_LOG_SETTING: str(tmp / "callback-runs.log"),
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then SIGKILL to the worker's whole process group: nothing is left over."""
    if process.poll() is None:
        process.terminate()  # the main process only: it stops its pool itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the pool's children, should any remain
    process.wait(timeout=STOP_TIMEOUT)


@dataclass
class Worker:
    app: Celery
    log_file: Path
    process: subprocess.Popen[bytes]

    def check(self, *_: object) -> None:
        """Fail at once, rather than at a timeout, when the worker has died."""
        if self.process.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-3000:]
            pytest.fail(f"the worker exited ({self.process.returncode}):\n{tail}")


@contextmanager
def running_worker(
    endpoint: S3Endpoint,
    bucket: str,
    keyring_file: Path,
    tmp_path: Path,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    events: bool = False,
    hostname: str = "e2e@localhost",
    quiet: bool = False,
    **settings: Any,
) -> Iterator[Worker]:
    """A worker logging everything at DEBUG to ``tmp_path / "worker.log"`` (its stdout and stderr
    to ``tmp_path / "worker.out"``). ``events`` adds -E (task events), ``quiet`` Celery's
    ``--quiet`` (no banner); ``settings`` are added to the app's configuration."""
    config = {**worker_config(endpoint, bucket, keyring_file, tmp_path), **settings}
    log_file = tmp_path / "worker.log"
    env = {
        **os.environ,
        CONFIG_VARIABLE: json.dumps(config),
        "PYTHONPATH": subprocess_pythonpath(),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "support.e2e_app", *(["--quiet"] if quiet else []),
        "worker", *(["-E"] if events else []),
        f"--pool={pool}", f"--concurrency={concurrency}", "--loglevel=DEBUG",
        f"--logfile={log_file}", "--without-gossip", "--without-mingle", "--without-heartbeat",
        f"--hostname={hostname}",
    ]  # fmt: skip
    with open(tmp_path / "worker.out", "wb") as output:
        process = subprocess.Popen(
            command, cwd=TESTS, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "ready." not in (log_file.read_text() if log_file.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                output_text = (tmp_path / "worker.out").read_text(errors="replace")
                pytest.fail(f"worker did not start (exit {process.poll()}):\n{output_text[-3000:]}")
            time.sleep(0.1)
        yield Worker(make_app(config), log_file, process)
    finally:
        stop(process)


def log_records(log: str) -> list[tuple[str, str]]:
    """(logger name, text) per record of a worker's log; a record's traceback lines belong to it."""
    records: list[tuple[str, str]] = []
    for line in log.splitlines():
        start = RECORD_START.match(line)
        if start or not records:
            records.append((start.group(1) if start else "", line))
        else:
            records[-1] = (records[-1][0], records[-1][1] + "\n" + line)
    return records
