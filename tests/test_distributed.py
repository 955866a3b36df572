"""``rotate --distributed`` on real Celery workers (prefork, 2 processes): the same report as the
local command, each envelope rewrapped exactly once, no concurrent write lost, and a worker
killed mid-shard costs nothing but a resume."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.runs import Driver
from celery_s3_envelope.store import S3Store
from support.cli import invoke
from support.distributed import fill, layout, pool_children, worker_puts
from support.e2e_app import PUT_LOG_VARIABLE
from support.keys import two_keyrings
from support.results import value
from support.s3 import S3Endpoint, fresh_bucket
from support.worker import BASE_PATH as BASE
from support.worker import running_worker

INCLUDE = {"include": ["celery_s3_envelope.distributed"]}
TIMEOUT = "240"
SLOW_TIMEOUT = "1800"  # 20,000 objects at moto's ~300 requests/s, two requests each
IGNORED = ("elapsed_seconds", "objects_per_second", "run_id", "shards", "target")


@pytest.fixture
def keyrings(tmp_path: Path) -> tuple[cse.Keyring, cse.Keyring, Path]:
    """(k1 active), (k1 decrypt, k2 active) and the latter's file, which the workers load."""
    k1, both = two_keyrings()
    path = tmp_path / "rotated.json"
    both.to_file(path)
    return k1, both, path


def cli(app: Celery, *args: str) -> tuple[int, dict[str, Any], str]:
    result = invoke(envelope, *args, app=app)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in IGNORED}


def assert_all_under(store: S3Store, keyring: cse.Keyring, keys: list[str], kek: str) -> None:
    for key in keys:
        data = store.get(key)
        assert data is not None and cse.inspect(data).kek_id == kek, key
        cse.unseal(data, key=key, keyring=keyring)


def rotate_equals_local(
    s3_endpoint: S3Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keyrings: tuple[cse.Keyring, cse.Keyring, Path],
    count: int,
    unknown: int,
    shards: int,
    timeout: str = TIMEOUT,
) -> None:
    k1, both, both_path = keyrings
    client = s3_endpoint.client()
    envelopes, others = layout(count, unknown)
    log = tmp_path / "puts.log"
    monkeypatch.setenv(PUT_LOG_VARIABLE, str(log))  # the workers log each PUT they make
    with fresh_bucket(client) as distributed, fresh_bucket(client) as local:
        store, twin = s3_endpoint.store(distributed), s3_endpoint.store(local)
        fill([store, twin], k1, envelopes, others)
        expected = Rotation(twin, both, prefix=BASE).run().to_dict()
        with running_worker(s3_endpoint, distributed, both_path, tmp_path, **INCLUDE) as worker:
            status, report, stderr = cli(
                worker.app, "rotate", "--distributed", "--shards", str(shards), "--json",
                "--timeout", timeout,
            )  # fmt: skip
        assert status == 0, stderr
        assert comparable(report) == comparable(expected)
        assert report["rewrapped"] == count and report["plaintext"] == unknown
        assert all(shard["state"] == "done" for shard in report["shards"])
        assert len(report["shards"]) == 3 * (shards + 1) + 1
        puts = worker_puts(log, distributed, envelopes + others)
        assert {puts[key] for key in envelopes} == {1}  # each envelope rewrapped exactly once
        assert {puts[key] for key in others} == {0}  # nothing else written
        assert_all_under(store, both, envelopes, "k2")


def test_distributed_rotate_equals_local_and_rewraps_each_envelope_once(
    s3_endpoint: S3Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keyrings: tuple[cse.Keyring, cse.Keyring, Path],
) -> None:
    rotate_equals_local(s3_endpoint, tmp_path, monkeypatch, keyrings, 300, 20, shards=2)


@pytest.mark.slow
def test_distributed_rotate_20000_envelopes(
    s3_endpoint: S3Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keyrings: tuple[cse.Keyring, cse.Keyring, Path],
) -> None:
    rotate_equals_local(s3_endpoint, tmp_path, monkeypatch, keyrings, 20_000, 50, 8, SLOW_TIMEOUT)


def writer_keeps_every_write(
    s3_endpoint: S3Endpoint,
    tmp_path: Path,
    keyrings: tuple[cse.Keyring, cse.Keyring, Path],
    count: int,
    written: int,
    timeout: str = TIMEOUT,
) -> None:
    k1, both, both_path = keyrings
    client = s3_endpoint.client()
    envelopes, others = layout(count, 8)
    raced = random.Random(7).sample(envelopes, written)
    with fresh_bucket(client) as bucket:
        store = s3_endpoint.store(bucket)
        fill([store], k1, envelopes, others)
        start, stop = threading.Event(), threading.Event()
        last: dict[str, str] = {}

        def writer() -> None:  # a live worker storing results under the new active KEK
            start.wait(timeout=60)
            for rounds in range(1, 1000):
                for key in raced:
                    if stop.is_set() and rounds > 1:
                        return
                    last[key] = value(envelopes.index(key), f"v{rounds + 1}")
                    store.put(key, cse.seal(last[key], key=key, keyring=both))

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        with running_worker(s3_endpoint, bucket, both_path, tmp_path, **INCLUDE) as worker:
            start.set()
            status, report, stderr = cli(
                worker.app, "rotate", "--distributed", "--shards", "2", "--json",
                "--timeout", timeout,
            )  # fmt: skip
            stop.set()
            thread.join(timeout=120)
        assert not thread.is_alive()
        assert status == 0, stderr
        assert report["scanned"] == count + len(others)
        assert report["rewrapped"] + report["current"] + report["changed"] == count
        for key in raced:  # the writer's last write is what the bucket holds
            data = store.get(key)
            assert data is not None
            assert cse.unseal(data, key=key, keyring=both) == last[key]
        assert_all_under(store, both, envelopes, "k2")


def test_a_writer_during_a_distributed_rotation_loses_no_write(
    s3_endpoint: S3Endpoint, tmp_path: Path, keyrings: tuple[cse.Keyring, cse.Keyring, Path]
) -> None:
    writer_keeps_every_write(s3_endpoint, tmp_path, keyrings, 300, 200)


@pytest.mark.slow
def test_a_writer_during_a_20000_object_distributed_rotation_loses_no_write(
    s3_endpoint: S3Endpoint, tmp_path: Path, keyrings: tuple[cse.Keyring, cse.Keyring, Path]
) -> None:
    writer_keeps_every_write(s3_endpoint, tmp_path, keyrings, 20_000, 200, SLOW_TIMEOUT)


def test_a_worker_killed_mid_shard_finishes_after_resume(
    s3_endpoint: S3Endpoint, tmp_path: Path, keyrings: tuple[cse.Keyring, cse.Keyring, Path]
) -> None:
    k1, both, both_path = keyrings
    client = s3_endpoint.client()
    envelopes, others = layout(200, 8)
    with fresh_bucket(client) as bucket:
        store = s3_endpoint.store(bucket)
        fill([store], k1, envelopes, others)
        failures: list[str] = []
        done = threading.Event()

        def reader() -> None:  # every object opens with the keyring throughout
            while not done.is_set():
                key = random.choice(envelopes)
                data = store.get(key)
                try:
                    assert data is not None
                    cse.unseal(data, key=key, keyring=both)
                except Exception as exc:
                    failures.append(f"{key}: {exc!r}")
                time.sleep(0.01)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        with running_worker(s3_endpoint, bucket, both_path, tmp_path, **INCLUDE) as worker:
            driver = Driver(worker.app, store, BASE)
            state = driver.start("rotate", both, {"workers": 4}, parts=1)
            deadline = time.monotonic() + 60
            while not any(
                cse.inspect(store.get(key) or b"").kek_id == "k2" for key in envelopes[:30]
            ):  # some shard is under way
                assert time.monotonic() < deadline, "no shard started"
                worker.check()
                time.sleep(0.05)
            for child in pool_children(worker.process.pid):
                os.kill(child, signal.SIGKILL)
            result = driver.wait(state, timeout=30)
            if not result.ok:  # not redelivered: --resume sends the unfinished shards again
                result = driver.wait(driver.resume(state.run_id), timeout=120)
        done.set()
        thread.join(timeout=30)
        assert result.ok, result.to_dict()["shards"]
        assert result.report.counts["scanned"] == len(envelopes) + len(others)
        assert not failures, failures[:5]
        assert_all_under(store, both, envelopes, "k2")
