"""End to end: a real ``celery worker`` with events on prints no result and no exception message.

The worker is started the ordinary way (``celery -A support.e2e_app worker -E``, configuration only:
the backend wires ``envelope_redact`` when it starts), logs every logger at DEBUG, and an event
receiver listens on the broker. The tasks' results and exception messages are hashes of a fresh
token (``support.e2e_app.secret``), so finding one in a log record or an event means it leaked. With
``envelope_redact = False`` the same run must find them, which shows the scan can fail.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import chord, states
from celery.exceptions import ChordError
from celery.result import AsyncResult, ResultSet

from support.e2e_app import E2EFailure, secret
from support.events import EventCollector, collecting_events
from support.s3 import S3Endpoint
from support.worker import Worker, log_records, running_worker

SUCCEEDED, FAILED = range(0, 3), range(3, 5)
CHORD_OK, CHORD_FAILED = 5, 6  # a chord whose header fails: Celery logs "Chord %r raised: %r"
TIMEOUT = 60.0


def _run_tasks(worker: Worker, events: EventCollector, token: str) -> dict[str, list[AsyncResult]]:
    """Send the tasks, check every result reads back intact, wait for their final events."""
    app = worker.app
    echo, fail = app.tasks["e2e.echo"], app.tasks["e2e.fail"]
    sent = {
        "ok": [echo.delay(n, token) for n in SUCCEEDED],
        "failed": [fail.delay(n, token) for n in FAILED],
    }
    callback = chord([echo.s(CHORD_OK, token), fail.s(CHORD_FAILED, token)])(
        app.tasks["e2e.collect"].s(token)
    )
    ResultSet([*sent["ok"], *sent["failed"], callback], app=app).join_native(
        timeout=TIMEOUT, propagate=False, on_interval=worker.check
    )
    assert callback.state == states.FAILURE and isinstance(callback.result, ChordError)
    assert secret("failure", token, CHORD_FAILED) in str(callback.result)
    for number, result in zip(SUCCEEDED, sent["ok"], strict=True):
        assert result.get(timeout=TIMEOUT) == {
            "number": number,
            "secret": secret("result", token, number),
        }
    for number, result in zip(FAILED, sent["failed"], strict=True):
        assert result.state == states.FAILURE and isinstance(result.result, E2EFailure)
        assert str(result.result) == secret("failure", token, number)
        assert result.traceback and secret("failure", token, number) in result.traceback

    header_ok, header_failed = callback.parent.results
    expected = {("task-succeeded", r.id) for r in [*sent["ok"], header_ok]}
    expected |= {("task-failed", r.id) for r in [*sent["failed"], header_failed]}

    def finished(collector: EventCollector) -> bool:
        types = ("task-succeeded", "task-failed")
        return expected <= {(e["type"], e["uuid"]) for e in collector.of_type(*types)}

    assert events.wait_for(finished, timeout=TIMEOUT), [e["type"] for e in events.events]
    return sent


def _worker_records(tmp_path: Path) -> list[tuple[str, str]]:
    """Every record of the worker's log file and of its stdout/stderr (tracebacks included)."""
    log = (tmp_path / "worker.log").read_text(errors="replace")
    return log_records(log) + log_records((tmp_path / "worker.out").read_text(errors="replace"))


def _secrets(token: str) -> list[str]:
    return [secret("result", token, n) for n in [*SUCCEEDED, CHORD_OK]] + [
        secret("failure", token, n) for n in [*FAILED, CHORD_FAILED]
    ]


def _event(events: list[dict[str, Any]], type: str, task_id: str) -> dict[str, Any]:
    (event,) = [e for e in events if e["type"] == type and e["uuid"] == task_id]
    return event


@pytest.mark.parametrize(
    ("pool", "quiet"), [("prefork", False), ("threads", False), ("solo", False), ("prefork", True)]
)
def test_worker_logs_and_events_hold_no_result_or_exception_text(
    pool: str,
    quiet: bool,
    s3_endpoint: S3Endpoint,
    bucket: str,
    keyring_file: Path,
    tmp_path: Path,
) -> None:
    """``quiet``: ``celery --quiet worker`` prints no banner, so nothing builds the backend before
    the worker's event dispatcher; redaction must be in place all the same."""
    token = uuid.uuid4().hex
    with (
        running_worker(
            s3_endpoint, bucket, keyring_file, tmp_path, pool=pool, quiet=quiet, events=True
        ) as worker,
        collecting_events(worker.app) as events,
    ):
        sent = _run_tasks(worker, events, token)
    records, seen = _worker_records(tmp_path), events.events
    assert any(name == "celery.pool" or "DEBUG" in text for name, text in records)  # all levels

    for name, text in records:
        leaked = [s for s in _secrets(token) if s in text]
        assert not leaked, f"{leaked[0]} in a log record of {name!r}:\n{text}"
    wire = json.dumps(seen)
    assert not [s for s in _secrets(token) if s in wire], "a result or message in an event"

    # What stays: the marker, and for failures the type, the task's name and id, the frames.
    trace = [text for name, text in records if name == "celery.app.trace"]
    for result in sent["ok"]:
        (line,) = [t for t in trace if f"Task e2e.echo[{result.id}] succeeded in " in t]
        assert line.endswith(": <sealed: dict, 58 B>")
        event = _event(seen, "task-succeeded", result.id)
        assert event["result"] == "<sealed: dict, 58 B>" and event["runtime"] > 0
    for result in sent["failed"]:
        (line,) = [t for t in trace if f"Task e2e.fail[{result.id}] raised unexpected" in t]
        assert "raised unexpected: E2EFailure(<redacted>)\nTraceback (most recent call" in line
        assert 'e2e_app.py", line ' in line and ", in fail" in line
        assert line.endswith("e2e_app.E2EFailure: <redacted>")
        event = _event(seen, "task-failed", result.id)
        assert event["exception"] == "E2EFailure(<redacted>)"
        assert 'e2e_app.py", line ' in event["traceback"]
        assert event["traceback"].endswith("e2e_app.E2EFailure: <redacted>\n")
    chord_lines = [t for n, t in records if n == "celery.backends.base" and " raised: " in t]
    assert chord_lines and all("E2EFailure(<redacted>)" in t for t in chord_lines)


def test_with_redaction_off_the_same_scan_finds_the_values(
    s3_endpoint: S3Endpoint, bucket: str, keyring_file: Path, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    with (
        running_worker(
            s3_endpoint, bucket, keyring_file, tmp_path, events=True, envelope_redact=False
        ) as worker,
        collecting_events(worker.app) as events,
    ):
        _run_tasks(worker, events, token)
    logged = "\n".join(text for _, text in _worker_records(tmp_path))
    wire = json.dumps(events.events)
    for value in _secrets(token):
        assert value in logged and value in wire
