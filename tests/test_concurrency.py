"""Concurrency: a prefork pool (4 processes) and a threads pool (8 threads) storing results while
a rotation runs over the same prefix. Every result is readable, none is lost or crossed with
another task's, and the rotation overwrites no result a worker wrote.

That last race is made certain rather than left to timing: the rotation's first run reads a few
objects that still hold a task's previous state, and is held between that read and its write
(``HeldReads``) until the worker has stored the task's result there. Its write must then be
refused (If-Match on the ETag it read): the result stays, and the object is counted as changed.
The other old objects race the workers only as timing allows; the runs that follow find the
workers' results already under the active KEK and leave them alone.

The fast tier runs 200 tasks per pool; ``make test-all`` runs the issue's 2,000.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult, ResultSet

import celery_s3_envelope as cse
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.sweep import ObjectResult, Outcome
from celery_s3_envelope.store import Fetched, S3Store
from support.e2e_app import secret
from support.keys import two_keyrings
from support.s3 import S3Endpoint
from support.worker import BASE_PATH as BASE
from support.worker import RESULT_TIMEOUT, running_worker

ROTATION_THREADS = 8
HELD = 4
"""Objects whose first read by the rotation is held: fewer than its threads, so it goes on."""


def stored_meta(store: S3Store, key: str, keyring: cse.Keyring) -> dict[str, Any]:
    body = store.get(key)
    assert body is not None, key
    meta: dict[str, Any] = json.loads(cse.unseal(body, keyring=keyring, key=key))
    return meta


class HeldReads:
    """The store as the rotation in this process sees it: the first ``fetch`` of each of
    ``keys`` returns what it read only once a worker has stored a result over it (a newer
    object with status SUCCESS), so the rotation's write-back races that result for certain."""

    def __init__(self, store: S3Store, keys: Iterable[str], keyring: cse.Keyring) -> None:
        self._store = store
        self._keyring = keyring
        self._unread = set(keys)
        self._lock = threading.Lock()
        self.all_read = threading.Event()
        self.never_overwritten: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def fetch(self, key: str) -> Fetched | None:
        got = self._store.fetch(key)
        with self._lock:
            hold = key in self._unread
            self._unread.discard(key)
            if hold and not self._unread:
                self.all_read.set()
        if hold and got is not None:
            self._until_result_stored(key, got.etag)
        return got

    def _until_result_stored(self, key: str, etag: str) -> None:
        deadline = time.monotonic() + RESULT_TIMEOUT
        while time.monotonic() < deadline:
            now = self._store.fetch(key)
            if now is not None and now.etag != etag:
                meta = json.loads(cse.unseal(now.body, keyring=self._keyring, key=key))
                if meta["status"] == "SUCCESS":
                    return
            time.sleep(0.05)
        self.never_overwritten.append(key)


def run_pool(
    s3_endpoint: S3Endpoint, bucket: str, store: S3Store, tmp_path: Path, pool: str,
    concurrency: int, tasks: int,
) -> None:  # fmt: skip
    k1, both = two_keyrings()
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

    old_keys = {f"{BASE}celery-task-meta-{task_id}": n for n, task_id in enumerate(old_ids)}
    held_keys = sorted(old_keys)[:HELD]  # listed first: read by the rotation's first threads
    held = HeldReads(store, held_keys, both)
    stop = threading.Event()
    first_run: dict[str, ObjectResult] = {}
    first_run_done = threading.Event()
    rotations: list[int] = []
    rotation_errors: list[BaseException] = []

    def rotate_until_stopped() -> None:
        try:
            while not stop.is_set():
                record = None if rotations else (lambda r: first_run.setdefault(r.key, r))
                rotation = Rotation(
                    held, both, prefix=BASE, workers=ROTATION_THREADS, on_result=record
                )
                report = rotation.run()
                assert report.ok, report.failures
                rotations.append(report.counts["changed"])
                first_run_done.set()
        except BaseException as exc:
            rotation_errors.append(exc)
            first_run_done.set()

    with running_worker(
        s3_endpoint, bucket, keyring_file, tmp_path, pool=pool, concurrency=concurrency
    ) as worker:
        rotator = threading.Thread(target=rotate_until_stopped)
        rotator.start()
        try:
            # The tasks go out only once the rotation holds its stale reads of the held objects.
            assert held.all_read.wait(RESULT_TIMEOUT), "the rotation never read the held objects"
            echo = worker.app.tasks["e2e.echo"]
            sent = [echo.apply_async((n, token), task_id=old_ids[n]) for n in range(len(old_ids))]
            sent += [echo.delay(n, token) for n in range(len(old_ids), tasks)]
            deadline = time.monotonic() + RESULT_TIMEOUT
            while not first_run_done.wait(0.5):
                worker.check()
                assert time.monotonic() < deadline, "the rotation's first run did not finish"
            assert not rotation_errors, rotation_errors
            assert not held.never_overwritten, held.never_overwritten
            # Each held write-back came after the worker's result: refused, not written, and
            # counted as changed.
            for key in held_keys:
                meta = stored_meta(store, key, both)
                n = old_keys[key]
                assert (meta["status"], meta["result"]) == (
                    "SUCCESS", {"number": n, "secret": secret("result", token, n)}
                ), f"the rotation overwrote the result of task {n}"  # fmt: skip
            assert {key: first_run[key].outcome for key in held_keys} == dict.fromkeys(
                held_keys, Outcome.CHANGED
            )
            ResultSet(sent, app=worker.app).join_native(
                timeout=RESULT_TIMEOUT * 3, propagate=True, on_interval=worker.check
            )
        finally:
            stop.set()
            rotator.join(timeout=120)
        assert not rotation_errors, rotation_errors
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
