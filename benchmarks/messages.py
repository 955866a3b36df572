"""Section 7: sealed task messages (the ``envelope`` serializer) against Celery's ``json``.

A task with one 1 KiB argument (a dict of text, as a chain hands on a result).

1. The serializer's CPU per message: kombu's ``dumps`` then ``loads`` of the task body, with
   ``envelope`` (JSON, zstd, AES-256-GCM, key wrap) and with ``json``; the difference is what
   sealing adds, and the goal (60 µs) is on it. A Celery worker decodes each body twice, whatever
   the serializer (its consumer reads it, its pool child runs it), so the table also shows seal +
   two unseals.
2. The whole round trip on kombu's filesystem transport, as Celery does it: ``app.send_task``
   (Celery's publish path, its signals, kombu's producer, a file per message), then a consumer
   draining the queue and decoding each body twice, as the worker does. Interleaved rounds, the
   median of per-round ratios.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery import _state as celery_state
from harness import Goal, fmt_time, interleave, ratio, table
from kombu import Connection
from kombu.serialization import dumps, loads

import celery_s3_envelope as cse
from celery_s3_envelope import messages

ARGUMENT = {"patient": "x" * 900, "ward": "cardiology", "notes": ["follow-up"] * 8}
"""About 1 KiB as JSON."""
BATCH = 50
SEAL_UNSEAL_TARGET = 60e-6
ROUND_TRIP_TARGET = 1.1


def body() -> tuple[Any, ...]:
    return ([ARGUMENT], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def make_app(serializer: str, folder: Path, keyring: cse.Keyring) -> Celery:
    (folder / "q").mkdir(parents=True)
    app = Celery(f"bench-{serializer}", set_as_current=False)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": str(folder / "q"),
            "data_folder_out": str(folder / "q"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
        task_serializer=serializer,
        accept_content=[serializer],
        envelope_keyring=keyring,
    )
    return app


def round_trip(app: Celery) -> Any:
    content_type = messages.CONTENT_TYPE if app.conf.task_serializer == "envelope" else None
    accept = [content_type or "application/json"]

    def run() -> None:
        before = celery_state._tls.current_app
        app.set_current()
        try:
            for _ in range(BATCH):
                app.send_task("bench.task", args=(ARGUMENT,))
            with Connection(
                app.conf.broker_url, transport_options=app.conf.broker_transport_options
            ) as c:
                queue = c.SimpleQueue("celery", no_ack=True, accept=accept)
                for _ in range(BATCH):
                    message = queue.get(timeout=5)
                    token = None
                    if content_type:  # the worker's check knows the task id
                        token = messages._expected.set(messages.binding(message.headers["id"]))
                    try:
                        message.decode()  # the consumer's check / Celery's strategy
                    finally:
                        if token is not None:
                            messages._expected.reset(token)
                    loads(message.body, message.content_type, message.content_encoding,
                          accept=accept)  # the pool child  # fmt: skip
                queue.close()
        finally:
            celery_state._tls.current_app = before

    return run


def run(quick: bool = False) -> dict[str, Any]:
    keyring = cse.Keyring.generate("k1")
    goals: list[Goal] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        apps = {s: make_app(s, Path(tmp) / s, keyring) for s in ("envelope", "json")}
        before = celery_state._tls.current_app
        apps["envelope"].set_current()
        try:
            data = body()
            sealed = dumps(data, "envelope")
            plain = dumps(data, "json")
            assert loads(sealed[2], sealed[0], sealed[1]) == loads(plain[2], plain[0], plain[1])

            def envelope_once() -> Any:
                c, e, b = dumps(data, "envelope")
                return loads(b, c, e)

            def json_once() -> Any:
                c, e, b = dumps(data, "json")
                return loads(b, c, e)

            def envelope_twice() -> Any:
                c, e, b = dumps(data, "envelope")
                loads(b, c, e)
                return loads(b, c, e)

            cpu = interleave(
                {"envelope": envelope_once, "json": json_once, "envelope_2x": envelope_twice},
                rounds=7 if quick else 25,
            )
        finally:
            celery_state._tls.current_app = before
        added = cpu["envelope"].median - cpu["json"].median
        rows = [
            ["envelope: seal + unseal", fmt_time(cpu["envelope"].median)],
            [
                "envelope: seal + 2 unseals (what a worker does)",
                fmt_time(cpu["envelope_2x"].median),
            ],
            ["json: dumps + loads", fmt_time(cpu["json"].median)],
            ["added by sealing (envelope - json)", fmt_time(added)],
            ["sealed body / JSON body", f"{len(sealed[2]):,} / {len(plain[2]):,} bytes"],
        ]
        trips = interleave(
            {name: round_trip(app) for name, app in apps.items()},
            rounds=5 if quick else 15,
            round_time=0.3,
        )
        r = ratio(trips, "envelope", "json")
        q1, q3 = r.quartiles()
    print("## 7. Sealed task messages: envelope vs json (1 KiB argument)\n")
    print(table(["per message, CPU", "time"], rows))
    print()
    print(
        table(
            ["round trip on the filesystem broker", "per message"],
            [
                ["envelope", fmt_time(trips["envelope"].median / BATCH)],
                ["json", fmt_time(trips["json"].median / BATCH)],
                ["ratio (median of rounds)", f"{r.median:.2f}x (IQR {q1:.2f}-{q3:.2f})"],
            ],
        )
    )
    print()
    results = {
        "seal_unseal_seconds": cpu["envelope"].median,
        "seal_two_unseals_seconds": cpu["envelope_2x"].median,
        "json_seconds": cpu["json"].median,
        "added_seconds": added,
        "sealed_bytes": len(sealed[2]),
        "json_bytes": len(plain[2]),
        "round_trip_envelope_seconds": trips["envelope"].median / BATCH,
        "round_trip_json_seconds": trips["json"].median / BATCH,
        "round_trip_ratio": r.median,
        "round_trip_ratio_quartiles": [q1, q3],
    }
    # The goal is on what sealing costs: the JSON encoding inside is what json costs too.
    goals.append(Goal("messages_seal_unseal_us_over_json", added * 1e6, 60))
    goals.append(Goal("messages_round_trip_vs_json", r.median, ROUND_TRIP_TARGET))
    return {"results": results, "goals": goals}


if __name__ == "__main__":
    run(quick=True)
