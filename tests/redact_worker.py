"""Start ``celery -A e2e_app worker`` as ``test_e2e_worker`` does, with events on and a chosen pool.

The configuration, the broker and the shutdown are ``test_e2e_worker``'s (imported, not copied);
only the command line differs: ``-E``, the pool, and extra settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from backend_helpers import S3Endpoint
from e2e_app import CONFIG_VARIABLE, make_app
from test_e2e_worker import READY_TIMEOUT, TESTS, Worker, _config, _stop


@contextmanager
def running_worker(
    endpoint: S3Endpoint,
    bucket: str,
    keyring_file: Path,
    tmp_path: Path,
    *,
    pool: str = "prefork",
    **settings: Any,
) -> Iterator[Worker]:
    """A worker logging everything at DEBUG to ``tmp_path / "worker.log"``, sending task events."""
    config = {**_config(endpoint, bucket, keyring_file, tmp_path), **settings}
    log_file = tmp_path / "worker.log"
    env = {
        **os.environ,
        CONFIG_VARIABLE: json.dumps(config),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "e2e_app", "worker", "-E",
        f"--pool={pool}", "--concurrency=2", "--loglevel=DEBUG", f"--logfile={log_file}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname=redact@localhost",
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
        _stop(process)
