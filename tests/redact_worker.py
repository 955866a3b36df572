"""Start ``celery -A e2e_app worker`` as ``test_e2e_worker`` does, with events on and a chosen pool.

The configuration, the broker and the shutdown are ``test_e2e_worker``'s (imported, not copied);
only the command line differs: ``-E``, the pool, ``--quiet``, and extra settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import e2e_worker
from backend_helpers import S3Endpoint
from e2e_worker import Worker


@contextmanager
def running_worker(
    endpoint: S3Endpoint,
    bucket: str,
    keyring_file: Path,
    tmp_path: Path,
    *,
    pool: str = "prefork",
    quiet: bool = False,
    **settings: Any,
) -> Iterator[Worker]:
    """A worker logging everything at DEBUG to ``tmp_path / "worker.log"``, sending task events."""
    with e2e_worker.running_worker(
        endpoint, bucket, keyring_file, tmp_path, pool=pool, events=True,
        hostname="redact@localhost", quiet=quiet, **settings,
    ) as worker:  # fmt: skip
        yield worker
