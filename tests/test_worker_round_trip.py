"""End to end: a real ``celery worker`` (prefork, 2 processes) storing results in the bucket.

The broker is kombu's filesystem transport in ``tmp_path`` (nothing to install or start; see
``support.broker`` for the one fix it needs); results go through ``EnvelopeS3Backend`` to the
session's S3 endpoint. The test sends 200 tasks (successes, failures with tracebacks, a group, a
chord of 50), reads every result back, then proves from the bucket alone that nothing in it is
plaintext, and from the logs that nothing leaked there.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from celery import chord, group, states
from celery.result import AsyncResult, ResultSet

from celery_s3_envelope import Keyring, unseal
from support.e2e_app import CALLBACK_LOG_SETTING, E2EFailure, secret
from support.keys import key_material
from support.s3 import S3Endpoint
from support.worker import RESULT_TIMEOUT, Worker, log_records, running_worker

# Celery itself logs task return values and exceptions (``celery.app.trace``, INFO and ERROR) and
# task arguments (``celery.pool``, DEBUG; a chord callback's arguments are its header's results),
# whatever the backend. docs/backend.md tells users with regulated results how to quiet them.
# Every other record, the backend's, botocore's and kombu's included, must be free of plaintext.
CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.pool")


@pytest.fixture
def worker(
    s3_endpoint: S3Endpoint, bucket: str, keyring_file: Path, tmp_path: Path
) -> Iterator[Worker]:
    """A running worker, and the app to talk to it."""
    with running_worker(s3_endpoint, bucket, keyring_file, tmp_path) as running:
        yield running


def test_worker_round_trip_leaves_no_plaintext(
    worker: Worker,
    s3_endpoint: S3Endpoint,
    bucket: str,
    keyring: Keyring,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app, log_file, alive = worker.app, worker.log_file, worker.check
    token = uuid.uuid4().hex
    echo, fail, collect = app.tasks["e2e.echo"], app.tasks["e2e.fail"], app.tasks["e2e.collect"]

    singles = [(fail if n % 5 == 0 else echo).delay(n, token) for n in range(100)]
    grouped = group(
        (fail if n % 10 == 0 else echo).s(n, token) for n in range(100, 150)
    ).apply_async()
    chorded = chord(echo.s(n, token) for n in range(150, 200))(collect.s(token))

    # Every result comes back: values, failures with their tracebacks, extended metadata.
    everything = ResultSet([*singles, *grouped.results], app=app)
    everything.join_native(timeout=RESULT_TIMEOUT, propagate=False, on_interval=alive)
    failures = 0
    for result in [*singles, *grouped.results]:
        number = result.args[0]
        assert result.name in {"e2e.echo", "e2e.fail"}
        assert result.args == [number, token]  # result_extended
        if result.name == "e2e.fail":
            failures += 1
            assert result.state == states.FAILURE
            assert isinstance(result.result, E2EFailure)
            assert str(result.result) == secret("failure", token, number)
            assert "Traceback" in result.traceback and "E2EFailure" in result.traceback
        else:
            assert result.state == states.SUCCESS
            assert result.result == {"number": number, "secret": secret("result", token, number)}
    assert failures == 20 + 5

    chord_value = chorded.get(timeout=RESULT_TIMEOUT, on_interval=alive)
    assert chord_value == {
        "count": 50,
        "total": sum(range(150, 200)),
        "secret": secret("chord", token, 50),
    }
    header = [AsyncResult(r.id, app=app) for r in chorded.parent.results]
    assert [r.get(timeout=RESULT_TIMEOUT)["number"] for r in header] == list(range(150, 200))

    # Anything a duplicate callback would publish is queued before this, so it has run by now.
    assert (
        app.tasks["e2e.sentinel"].delay().get(timeout=RESULT_TIMEOUT, on_interval=alive) == "done"
    )
    assert Path(app.conf[CALLBACK_LOG_SETTING]).read_text().count("\n") == 1

    # The bucket alone: every object opens with the keyring, none holds any plaintext.
    plaintexts = [token] + [
        secret(kind, token, n)
        for n in range(200)
        for kind in ("result", "failure")
    ] + [secret("chord", token, 50), "E2EFailure", "Traceback", "e2e.echo"]  # fmt: skip
    client = s3_endpoint.client()
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", ())
    ]
    # 200 tasks, the callback and the sentinel; the chord deleted its counter and saved group.
    assert len(keys) == 202
    assert all(key.startswith("e2e/results/celery-task-meta-") for key in keys)
    with ThreadPoolExecutor(8) as pool:
        bodies = pool.map(lambda k: client.get_object(Bucket=bucket, Key=k)["Body"].read(), keys)
        objects = dict(zip(keys, bodies, strict=True))
    for key, body in objects.items():
        leaks = [text for text in plaintexts if text.encode() in body]
        assert not leaks, f"{key} holds plaintext {leaks[:3]}"
        meta = json.loads(unseal(body, keyring=keyring, key=key))
        assert meta["status"] in (states.SUCCESS, states.FAILURE)

    # Logs at DEBUG (worker and this process): no key material anywhere; results only where
    # Celery's tracer prints them, which shows the scan does see results when they are logged.
    material = key_material(keyring)
    records = log_records(log_file.read_text(errors="replace"))
    records += log_records((tmp_path / "worker.out").read_text(errors="replace"))
    records += [(r.name, r.getMessage()) for r in caplog.records]
    results = [text for text in plaintexts if text.startswith(("result-", "failure-"))]
    seen_by_tracer = 0
    for name, text in records:
        assert not any(m in text for m in material), f"key material in a log record of {name}"
        if ("result-" in text or "failure-" in text) and any(r in text for r in results):
            assert name in CELERY_TASK_LOGGERS, f"a result in a log record of {name}"
            seen_by_tracer += 1
    assert seen_by_tracer > 0
    assert not any("Chord counter incremented too many times" in text for _, text in records)
    assert not any("celery.chord_unlock[" in text for _, text in records)  # no polling task ran
