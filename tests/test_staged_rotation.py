"""A staged rotation through a rolling deploy, on real workers: two prefork workers share one
broker, one on the old keyring and one on the new (k2 staged to seal from a moment ahead); then
the old one is redeployed with the new keyring, and the moment passes. Chords and groups run in
every phase and none fails; results end up under both keys (docs/rotation.md, the runbook)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery, chord, group, states

import celery_s3_envelope as cse
from support.s3 import S3Endpoint
from support.worker import BASE_PATH, RESULT_TIMEOUT, Worker, running_worker, worker_config

SWITCH_AHEAD = 30.0
"""Seconds from the test's start to the staged switch: past the first phase, inside the last."""


def run_round(app: Celery, worker: Worker, token: str, size: int = 12) -> None:
    """A chord and a group; every part and the callback must succeed."""
    echo, collect = app.tasks["e2e.echo"], app.tasks["e2e.collect"]
    chorded = chord(echo.s(n, token) for n in range(size))(collect.s(token))
    grouped = group(echo.s(n, token) for n in range(size, 2 * size)).apply_async()
    total = chorded.get(timeout=RESULT_TIMEOUT, on_interval=worker.check, propagate=True)
    assert total["count"] == size and total["total"] == sum(range(size))
    values = grouped.join_native(timeout=RESULT_TIMEOUT, propagate=True, on_interval=worker.check)
    assert [v["number"] for v in values] == list(range(size, 2 * size))
    assert chorded.state == states.SUCCESS


def kek_ids(endpoint: S3Endpoint, bucket: str, reader: cse.Keyring) -> set[str]:
    store = endpoint.store(bucket)
    return {
        cse.inspect(store.get(info.key) or b"").kek_id
        for info in store.list(BASE_PATH)
        if info.key.rsplit("/", 1)[-1].startswith("celery-task-meta-")
    }


def test_chords_and_groups_never_fail_through_a_staged_rotation(
    s3_endpoint: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    old = cse.Keyring.generate("k1")
    switch = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=SWITCH_AHEAD)
    staged = old.with_entry(
        cse.LocalKey("k2", b"\x02" * 32, cse.KeyState.DECRYPT).scheduled(switch)
    )
    old_file, new_file = tmp_path / "old.json", tmp_path / "new.json"
    old.to_file(old_file)
    staged.to_file(new_file)
    folders = {name: tmp_path / name for name in ("a", "a2", "b")}
    for folder in folders.values():
        folder.mkdir()
    shared: dict[str, Any] = worker_config(s3_endpoint, bucket, new_file, tmp_path)
    broker = {"broker_transport_options": shared["broker_transport_options"]}
    token = uuid.uuid4().hex

    def worker(name: str, keyring_file: Path) -> Any:
        return running_worker(
            s3_endpoint, bucket, keyring_file, folders[name], hostname=f"{name}@localhost",
            **broker,
        )  # fmt: skip

    # Phase 1: a rolling deploy in progress: worker a still has the old keyring, b the new.
    with worker("b", new_file) as b:
        with worker("a", old_file):
            for _ in range(2):
                run_round(b.app, b, token)
        assert datetime.now(UTC) < switch, "phase 1 ran past the switch: raise SWITCH_AHEAD"
        assert kek_ids(s3_endpoint, bucket, staged) == {"k1"}  # nothing sealed with k2 yet
        # Phase 2: a is redeployed with the new keyring; the switch passes while chords run.
        with worker("a2", new_file):
            while datetime.now(UTC) < switch + timedelta(seconds=3):
                run_round(b.app, b, token, size=6)
            for _ in range(2):
                run_round(b.app, b, token)
            time.sleep(0.2)
    assert kek_ids(s3_endpoint, bucket, staged) == {"k1", "k2"}  # both keys sealed results
