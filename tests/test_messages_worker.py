"""End to end: task messages sealed on a real broker, opened by a real prefork worker (issue 20).

One worker run (``run``, shared by the tests of this module) with the app configured only by
``task_serializer = "envelope"`` and ``accept_content = ["envelope"]``: a chain (task 1's result is
task 2's argument), a chord, a group, a task with keyword arguments, a retry and a failing task;
and, put on the worker's queue by hand, a message whose body has a flipped bit, one whose body is
truncated, one carrying another message's body, and one unsealed (JSON) message. The publisher's
keyring is mid-rotation (k1 active, k2 staged) and the worker's one step further (k2 active, k1
decrypt): messages in flight under k1 still open.

Then every file the broker holds (kombu's filesystem transport, processed messages kept; bodies
base64-decoded before the scan), the worker's DEBUG log and its output, and every event are
searched for the plaintext of every argument and result.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group, states
from celery.result import AsyncResult

from celery_s3_envelope import Keyring, KeyState, LocalKey, inspect
from celery_s3_envelope.messages import CONTENT_TYPE, TASK_BINDING
from support.e2e_app import E2EFailure, secret
from support.events import collecting_events
from support.messages import (
    body_of,
    current,
    message_files,
    put_message,
    read_message,
    readable_text,
)
from support.s3 import S3Endpoint, fresh_bucket
from support.worker import log_records, running_worker

TIMEOUT = 60.0
HOLD = "hold"
"""A queue no worker consumes: messages wait there to be copied, changed, onto the worker's."""
TAMPERED = ("flipped", "truncated", "swapped")
HOSTILE = ("no-task-header", "empty", "no-reprs")


@dataclass
class Run:
    token: str
    folders: dict[str, Path]
    results: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    """case -> the task id of the message refused."""
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    broker_text: dict[Path, str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    clear: set[str] = field(default_factory=set)
    """Task ids of the messages the test itself put on the broker in clear (JSON)."""

    def plaintexts(self) -> list[str]:
        """The token is in every task's arguments; the secrets are results (and a chain's
        second argument) and the failure's message."""
        return [self.token, *(s for s in self.expected_secrets())]

    def expected_secrets(self) -> list[str]:
        found: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, str) and "-" in value and len(value) > 20:
                found.append(value)

        walk(self.expected)
        return found


def _keyrings() -> tuple[Keyring, Keyring]:
    """(publisher: k1 active, k2 staged as decrypt), (worker: k2 active, k1 decrypt)."""
    import os

    publisher = Keyring.generate("k1").with_entry(LocalKey("k2", os.urandom(32), KeyState.DECRYPT))
    return publisher, publisher.with_state("k2", KeyState.ACTIVE)


def _wait(condition: Any, what: str, check: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        check()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _hold_and_tamper(app: Celery, run: Run, queue_folder: Path) -> None:
    """Three sealed messages on the hold queue; changed copies of them on the worker's."""
    echo = app.tasks["e2e.echo"]
    held = {n: echo.apply_async((100 + n, run.token), queue=HOLD) for n in range(3)}
    _wait(lambda: len(message_files(queue_folder, HOLD)) == 3, "held messages", lambda: None)
    by_id = {}
    for path in message_files(queue_folder, HOLD):
        message = read_message(path)
        by_id[message["headers"]["id"]] = message
    messages = [by_id[held[n].id] for n in range(3)]
    for message in messages:
        assert message["content-type"] == CONTENT_TYPE
        assert inspect(body_of(message)).kek_id == "k1"  # sealed by the publisher's active KEK
    run.held = {case: messages[n] for n, case in enumerate(TAMPERED)}

    flipped = bytearray(body_of(messages[0]))
    flipped[-20] ^= 0x01  # in the payload's ciphertext (the last 16 bytes are the GCM tag)
    put_message(queue_folder, "celery", messages[0], bytes(flipped))
    put_message(queue_folder, "celery", messages[1], body_of(messages[1])[:-9])
    # message 2's headers (its task id) with message 0's intact body
    put_message(queue_folder, "celery", messages[2], body_of(messages[0]))
    run.refused = {case: messages[n]["headers"]["id"] for n, case in enumerate(TAMPERED)}


def _hostile(app: Celery, run: Run, queue_folder: Path) -> dict[str, AsyncResult]:
    """Copies of sealed messages changed by someone with write access to the broker: without
    their ``task`` header (Celery would decode the body itself, looking for protocol 1), with an
    empty body, without ``argsrepr`` / ``kwargsrepr`` (valid: it runs, and Celery must not log
    the arguments instead); and a JSON message in protocol 1's form (no ``task`` header)."""
    echo = app.tasks["e2e.echo"]
    held = {
        case: echo.apply_async((110 + n, run.token), queue=HOLD) for n, case in enumerate(HOSTILE)
    }
    _wait(lambda: len(message_files(queue_folder, HOLD)) == 6, "held messages", lambda: None)
    by_id = {
        read_message(path)["headers"]["id"]: read_message(path)
        for path in message_files(queue_folder, HOLD)
    }
    messages = {case: by_id[result.id] for case, result in held.items()}
    no_task = json.loads(json.dumps(messages["no-task-header"]))
    del no_task["headers"]["task"]
    put_message(queue_folder, "celery", no_task, body_of(messages["no-task-header"]))
    put_message(queue_folder, "celery", messages["empty"], b"")
    no_reprs = json.loads(json.dumps(messages["no-reprs"]))
    for name in ("argsrepr", "kwargsrepr"):
        del no_reprs["headers"][name]
    put_message(queue_folder, "celery", no_reprs, body_of(messages["no-reprs"]))
    run.refused |= {case: held[case].id for case in ("no-task-header", "empty")}
    v1_id = str(uuid.uuid4())
    v1 = json.loads(json.dumps(messages["empty"]))
    v1.update({"headers": {"id": v1_id}, "content-type": "application/json"})
    v1["content-encoding"] = "utf-8"
    body = {"task": "e2e.echo", "id": v1_id, "args": [201, run.token], "kwargs": {}}
    put_message(queue_folder, "celery", v1, json.dumps(body).encode())
    run.refused["unsealed-v1"] = v1_id
    run.clear.add(v1_id)
    return {"no-reprs": held["no-reprs"]}


def _unsealed(app: Celery, run: Run) -> None:
    """A plain JSON task message from an app that does not seal, to the worker's queue."""
    plain = Celery("plain", set_as_current=False)
    plain.conf.update(
        {k: v for k, v in app.conf.items() if k.startswith("broker_")},
        task_serializer="json",
        accept_content=["json"],
    )
    result = plain.send_task("e2e.echo", args=(200, run.token), kwargs={})
    run.refused["unsealed"] = result.id
    run.clear.add(result.id)


def _workflow(app: Celery, run: Run) -> dict[str, AsyncResult]:
    t, token = app.tasks, run.token
    sent = {
        "chain": chain(t["e2e.echo"].s(1, token), t["e2e.relay"].s(token)).apply_async(),
        "chord": chord([t["e2e.echo"].s(2, token), t["e2e.echo"].s(3, token)])(
            t["e2e.collect"].s(token)
        ),
        "group": group(t["e2e.echo"].s(4, token), t["e2e.echo"].s(5, token)).apply_async(),
        "keywords": t["e2e.keywords"].apply_async(kwargs={"number": 6, "token": token}),
        "retry": t["e2e.flaky"].delay(7, token),
        "failure": t["e2e.fail"].delay(8, token),
        # a short name and id: Celery's "TaskPool: Apply" DEBUG line shows the request's
        # arguments within its 1,024-character cut
        "short": t["e2e.echo"].apply_async((9, token), task_id=f"s-{token[:6]}"),
    }
    run.expected = {
        "chain": {"from": secret("result", token, 1)[-8:], "secret": secret("relay", token, 1)},
        "chord": {"count": 2, "total": 5, "secret": secret("chord", token, 2)},
        "group": [{"number": n, "secret": secret("result", token, n)} for n in (4, 5)],
        "keywords": {"number": 6, "secret": secret("keywords", token, 6)},
        "retry": {"retries": 1, "secret": secret("retried", token, 7)},
        "failure": secret("failure", token, 8),
        "short": {"number": 9, "secret": secret("result", token, 9)},
        "no-reprs": {"number": 112, "secret": secret("result", token, 112)},
        # the chain's first result: the second task's argument, never printed or stored in clear
        "chain-first": {"number": 1, "secret": secret("result", token, 1)},
        "chord-parts": [{"number": n, "secret": secret("result", token, n)} for n in (2, 3)],
    }
    return sent


@pytest.fixture(scope="module")
def run(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("sealed-messages")
    publisher_keyring, worker_keyring = _keyrings()
    (tmp / "keys").mkdir()
    worker_keys, publisher_keys = tmp / "keys" / "worker.json", tmp / "keys" / "publisher.json"
    worker_keyring.to_file(worker_keys)
    publisher_keyring.to_file(publisher_keys)
    folders = {name: tmp / name for name in ("queue", "processed", "control")}
    run = Run(token=uuid.uuid4().hex, folders=folders)
    transport = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": True,  # every consumed message stays, to be scanned
        "polling_interval": 0.05,
    }
    with (
        fresh_bucket(s3_endpoint.client()) as bucket,
        running_worker(
            s3_endpoint,
            bucket,
            worker_keys,
            tmp,
            events=True,
            task_serializer="envelope",
            accept_content=["envelope"],
            broker_transport_options=transport,
        ) as worker,  # fmt: skip
    ):
        app = worker.app
        app.conf.envelope_keyring = str(publisher_keys)
        with current(app), collecting_events(app) as events:
            _hold_and_tamper(app, run, folders["queue"])
            hostile = _hostile(app, run, folders["queue"])
            _unsealed(app, run)
            sent = _workflow(app, run) | hostile
            for name in ("chain", "chord", "keywords", "retry", "short", "no-reprs"):
                run.results[name] = sent[name].get(timeout=TIMEOUT, propagate=False)
            run.results["group"] = sent["group"].get(timeout=TIMEOUT)
            failure = sent["failure"]
            failure.get(timeout=TIMEOUT, propagate=False)
            run.results["failure"] = failure.result
            run.results["chain-first"] = sent["chain"].parent.get(timeout=TIMEOUT)
            run.results["chord-parts"] = sent["chord"].parent.get(timeout=TIMEOUT)
            run.states = {case: AsyncResult(i, app=app).state for case, i in run.refused.items()}

            def settled_all() -> bool:  # refused (in the log) or, were it not, run
                log = worker.log_file.read_text(errors="replace")
                return all(
                    task_id in log or AsyncResult(task_id, app=app).state != "PENDING"
                    for task_id in run.refused.values()
                )

            _wait(settled_all, "the tampered messages refused (or run)", worker.check)
            run.ids = {name: r.id for name, r in sent.items()}
            run.ids["chain-first"] = sent["chain"].parent.id
            _wait(
                lambda: any(
                    e["type"] == "task-succeeded" and e["uuid"] == run.ids["chain"]
                    for e in events.events
                ),
                "the events",
                worker.check,
            )
            run.events = list(events.events)
            run.states |= {case: AsyncResult(i, app=app).state for case, i in run.refused.items()}
    log = (tmp / "worker.log").read_text(errors="replace")
    run.records = log_records(log) + log_records((tmp / "worker.out").read_text(errors="replace"))
    run.broker_text = {
        path: readable_text(path)
        for folder in folders.values()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    return run


def test_every_result_is_correct(run: Run) -> None:
    names = ("chain", "chord", "group", "keywords", "retry", "chain-first", "chord-parts")
    for name in (*names, "short", "no-reprs"):
        assert run.results[name] == run.expected[name], name
    failure = run.results["failure"]
    assert isinstance(failure, E2EFailure) and str(failure) == run.expected["failure"]


def test_no_plaintext_on_the_broker_in_the_log_or_in_events(run: Run) -> None:
    plaintexts = run.plaintexts()
    assert len(plaintexts) >= 10
    held_plain = {p for p in run.broker_text if p.name.endswith(f".{HOLD}.msg")}
    consumed = [p for p in run.broker_text if p.parent.name == "processed"]
    assert len(consumed) >= 12, "the processed messages were kept for the scan"
    for path, text in run.broker_text.items():
        if path in held_plain:
            continue
        leaked = [p for p in plaintexts if p in text]
        unsealed_copy = any(
            task_id in text and '"content-type": "application/json"' in text
            for task_id in run.clear
        )
        if unsealed_copy:  # the attacker's plaintext message itself, as it was delivered
            continue
        assert not leaked, f"{leaked[0]} in broker file {path.name}"
    assert any(name == "celery.pool" for name, _ in run.records), "the log is at DEBUG"
    for name, text in run.records:
        leaked = [p for p in plaintexts if p in text]
        assert not leaked, f"{leaked[0]} in a log record of {name!r}:\n{text}"
    wire = json.dumps(run.events)
    assert not [p for p in plaintexts if p in wire], "a value in an event"


def test_the_scan_finds_a_json_body(run: Run) -> None:
    """The unsealed message, as it sits on the broker: the same scan finds its argument, so a
    plaintext body could not pass the scan above unseen."""
    unsealed = [
        text
        for text in run.broker_text.values()
        if run.refused["unsealed"] in text and '"content-type": "application/json"' in text
    ]
    assert unsealed and all(run.token in text for text in unsealed)


def test_argsrepr_and_task_received_events_carry_markers(run: Run) -> None:
    received = {e["uuid"]: e for e in run.events if e["type"] == "task-received"}
    second = received[run.ids["chain"]]  # its argument is the chain's first result
    assert second["args"].startswith("<sealed: tuple, ") and second["kwargs"] == (
        "<sealed: dict, 2 B>"
    )
    keywords = received[run.ids["keywords"]]
    assert keywords["args"] == "<sealed: tuple, 2 B>"
    assert keywords["kwargs"].startswith("<sealed: dict, ")
    for path, text in run.broker_text.items():
        if path.parent.name == "processed" and CONTENT_TYPE in text:
            headers = json.loads(path.read_text())["headers"]
            if headers.get("id") == run.ids["no-reprs"] and "argsrepr" not in headers:
                continue  # the copy the test stripped of its reprs
            assert headers["argsrepr"].startswith("<sealed: tuple, ")
            assert headers["kwargsrepr"].startswith("<sealed: dict, ")


def _refusal(run: Run, case: str) -> str:
    task_id = run.refused[case]
    lines = [text for _, text in run.records if f"[{task_id!r}]" in text]
    assert lines, f"no log record of the {case} message"
    assert not any(f"[{task_id}] succeeded" in text for _, text in run.records)
    assert not any(f"[{task_id}] received" in text for _, text in run.records)
    assert run.states[case] == states.PENDING, "the task ran"
    for text in lines:
        leaked = [p for p in run.plaintexts() if p in text]
        assert not leaked, f"{leaked[0]} in the refusal:\n{text}"
        assert "withheld" in text
    return "\n".join(lines)


def test_a_body_with_a_flipped_bit_is_refused(run: Run) -> None:
    text = _refusal(run, "flipped")
    assert "refused a sealed task message 'e2e.echo'" in text
    assert "IntegrityError: payload authentication failed" in text


def test_a_truncated_body_is_refused(run: Run) -> None:
    text = _refusal(run, "truncated")
    assert "refused a sealed task message 'e2e.echo'" in text


def test_a_body_taken_from_another_message_is_refused(run: Run) -> None:
    """The body is intact and sealed by the right key, for another task id."""
    text = _refusal(run, "swapped")
    assert f"sealed for object key '{TASK_BINDING}{run.refused['flipped']}'" in text


def test_an_unsealed_message_is_refused_through_celerys_content_disallowed_path(run: Run) -> None:
    text = _refusal(run, "unsealed")
    assert "Refusing to deserialize untrusted content of type 'application/json'" in text
    assert "Received invalid task message" in text  # Celery's own message: its path, rejected


def test_a_sealed_message_without_its_task_header_is_refused_undecoded(run: Run) -> None:
    """Celery would decode it itself to look for a protocol 1 body, and log what it found."""
    text = _refusal(run, "no-task-header")
    assert "sealed, without task and id headers" in text


def test_an_empty_body_is_refused_and_the_worker_carries_on(run: Run) -> None:
    text = _refusal(run, "empty")
    assert "no body to open" in text
    assert run.results["short"] == run.expected["short"]  # sent after it, run


def test_a_clear_protocol_1_message_is_refused_without_its_body_in_the_log(run: Run) -> None:
    text = _refusal(run, "unsealed-v1")
    assert "unsealed, no task header" in text
