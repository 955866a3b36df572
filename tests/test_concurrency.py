"""Concurrency: a prefork pool (4 processes) and a threads pool (8 threads) storing results while
a rotation runs over the same prefix. Every result is readable, none is lost or crossed with
another task's, and the rotation overwrites no result a worker wrote.

The fast tier runs 200 tasks per pool; ``make test-all`` runs the issue's 2,000.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import pytest
from celery.result import AsyncResult, ResultSet

import celery_s3_envelope as cse
from backend_helpers import S3Endpoint
from celery_s3_envelope.rotation import Rotation
from celery_s3_envelope.store import S3Store
from e2e_app import secret
from e2e_worker import RESULT_TIMEOUT, running_worker

BASE = "e2e/results/"  # the e2e app's s3_base_path


def run_pool(
    s3_endpoint: S3Endpoint, bucket: str, store: S3Store, tmp_path: Path, pool: str,
    concurrency: int, tasks: int,
) -> None:  # fmt: skip
    k1 = cse.Keyring.generate("k1")
    both = k1.with_entry(cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE), activate=True)
    keyring_file = tmp_path / "keys.json"
    both.to_file(keyring_file)  # workers seal under k2 and still open k1
    token = uuid.uuid4().hex
    # The previous era, under k1: a tenth of the tasks already have a STARTED state stored, which
    # the workers overwrite with their results while the rotation re-wraps the same objects.
    old_ids = [str(uuid.uuid4()) for _ in range(tasks // 10)]
    for task_id in old_ids:
        key = f"{BASE}celery-task-meta-{task_id}"
        meta = json.dumps(
            {"status": "STARTED", "result": None, "traceback": None, "children": [],
             "date_done": None, "task_id": task_id}
        )  # fmt: skip
        store.put(key, cse.seal(meta, key=key, keyring=k1))

    stop = threading.Event()
    rotations: list[int] = []

    def rotate_until_stopped() -> None:
        while not stop.is_set():
            report = Rotation(store, both, prefix=BASE, workers=8).run()
            assert report.ok, report.failures
            rotations.append(report.counts["changed"])

    with running_worker(
        s3_endpoint, bucket, keyring_file, tmp_path, pool=pool, concurrency=concurrency
    ) as worker:
        rotator = threading.Thread(target=rotate_until_stopped)
        rotator.start()
        try:
            echo = worker.app.tasks["e2e.echo"]
            sent = [echo.apply_async((n, token), task_id=old_ids[n]) for n in range(len(old_ids))]
            sent += [echo.delay(n, token) for n in range(len(old_ids), tasks)]
            ResultSet(sent, app=worker.app).join_native(
                timeout=RESULT_TIMEOUT * 3, propagate=True, on_interval=worker.check
            )
        finally:
            stop.set()
            rotator.join(timeout=120)
        assert rotations, "the rotation ran during the workload"
        for n, result in enumerate(sent):
            fresh = AsyncResult(result.id, app=worker.app)
            worker.app.backend._cache.clear()
            assert fresh.get(timeout=30) == {"number": n, "secret": secret("result", token, n)}
    final = Rotation(store, both, prefix=BASE).run()
    assert final.ok and final.counts["rewrapped"] == 0  # the rotation had finished the job
    k2_only = cse.Keyring([both.get("k2")])
    bodies = store.get_many(info.key for info in store.list(BASE))
    for key, body in bodies.items():
        assert body is not None
        cse.unseal(body, keyring=k2_only, key=key)  # all under k2, every one whole


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 4), ("threads", 8)])
def test_pools_and_a_rotation_lose_and_cross_nothing(
    s3_endpoint: S3Endpoint, bucket: str, store: S3Store, tmp_path: Path, pool: str,
    concurrency: int,
) -> None:  # fmt: skip
    run_pool(s3_endpoint, bucket, store, tmp_path, pool, concurrency, tasks=200)


@pytest.mark.slow
@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 4), ("threads", 8)])
def test_pools_and_a_rotation_at_2000_tasks(
    s3_endpoint: S3Endpoint, bucket: str, store: S3Store, tmp_path: Path, pool: str,
    concurrency: int,
) -> None:  # fmt: skip
    run_pool(s3_endpoint, bucket, store, tmp_path, pool, concurrency, tasks=2000)
