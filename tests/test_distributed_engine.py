"""The shard task's engine in-process (no worker): checkpoints resume inside a shard, a finished
shard is not run again, a shard whose worker has another active KEK is reported as failed, and the
merged report counts every object once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.ops.celery_keys import CELERY_KEY_PREFIXES
from celery_s3_envelope.ops.context import Context
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.runs import (
    DONE,
    FAILED,
    RUNNING,
    TASK_NAME,
    Driver,
    RunState,
    report_document,
    run_shard,
)
from celery_s3_envelope.ops.scan import scan
from celery_s3_envelope.ops.shards import Shard
from celery_s3_envelope.store import S3Store

BASE = "r/"


class Outbox:
    """Stands in for the app: records the shard jobs instead of sending them."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def send_task(self, name: str, args: list[Any], queue: str | None = None) -> None:
        self.jobs.append(args[0])


def filled(store: S3Store, keyring: cse.Keyring, count: int) -> list[str]:
    keys = [f"{BASE}{CELERY_KEY_PREFIXES[i % 3]}{i:04x}{'0' * 28}" for i in range(count)]
    for key in keys:
        store.put(key, cse.seal(f'{{"n": "{key}"}}', key=key, keyring=keyring))
    store.put(BASE + "notes/readme", b"\x00\x01 not a result")
    return keys


def counting_puts(store: S3Store) -> Counter[str]:
    puts: Counter[str] = Counter()
    original = store.put

    def put(key: str, body: bytes, **kwargs: Any) -> Any:
        puts[key] += 1
        return original(key, body, **kwargs)

    store.put = put  # type: ignore[method-assign]
    return puts


def test_a_shard_resumes_after_its_checkpoint_and_the_merge_counts_each_object_once(
    store: S3Store,
    keyring: cse.Keyring,
    both: cse.Keyring,
    make_app: Callable[..., Celery],
) -> None:
    keys = filled(store, keyring, 120)
    outbox = Outbox()
    state = Driver(outbox, store, BASE).start("rotate", both, {"workers": 4}, parts=2)
    context = Context(app=make_app(s3_base_path=BASE, envelope_keyring=both))
    # A worker died in the busiest shard after 10 objects, its checkpoint written.
    busiest = max(
        outbox.jobs, key=lambda job: len(list(Shard.from_dict(job["shard"]).objects(store)))
    )
    shard = Shard.from_dict(busiest["shard"])
    partial_run = Rotation(store, both, listing=partial(shard.objects, store), limit=10).run()
    state.save_shard(
        shard.index, {"shard": shard.to_dict(), "state": RUNNING, **report_document(partial_run)}
    )
    puts = counting_puts(store)
    for job in outbox.jobs:
        assert run_shard(state, context, job) == DONE
    assert run_shard(state, context, busiest) == DONE  # redelivered after done: nothing to do
    result = Driver(outbox, store, BASE).wait(state, timeout=10)
    assert result.ok and result.finished
    document = result.to_dict()
    assert document["scanned"] == len(keys) + 1 and document["rewrapped"] == len(keys)
    assert document["plaintext"] == 1 and document["current"] == 0
    assert document["last_key"] == max([*keys, BASE + "notes/readme"])
    assert set(puts[key] for key in keys) <= {0, 1}
    assert sum(puts[key] for key in keys) == len(keys) - 10  # the checkpointed 10 not again
    assert all(cse.inspect(store.get(key) or b"").kek_id == "k2" for key in keys)


def test_a_shard_on_a_worker_with_another_active_kek_fails_with_its_range_and_reason(
    store: S3Store,
    keyring: cse.Keyring,
    both: cse.Keyring,
    make_app: Callable[..., Celery],
) -> None:
    keys = filled(store, keyring, 12)
    outbox = Outbox()
    state = Driver(outbox, store, BASE).start("rotate", both, {"workers": 2}, parts=1)
    stale = Context(app=make_app(s3_base_path=BASE))  # still k1 active: not yet deployed
    for job in outbox.jobs:
        assert run_shard(state, stale, job) == FAILED
    result = Driver(outbox, store, BASE).wait(state, timeout=10)
    assert not result.ok and len(result.failed_shards) == len(outbox.jobs)
    shard = result.to_dict()["shards"][1]
    assert shard["state"] == FAILED and "'k1'" in shard["reason"] and "'k2'" in shard["reason"]
    assert "celery-task-meta-" in shard["range"]
    assert all(cse.inspect(store.get(key) or b"").kek_id == "k1" for key in keys)  # untouched


def test_sweeps_skip_the_runs_state_and_the_scan_shows_it(
    store: S3Store, keyring: cse.Keyring, both: cse.Keyring
) -> None:
    filled(store, keyring, 3)
    state = RunState(store, BASE, "run-1")
    state.save_plan({"shards": []})
    elsewhere = BASE + "sub/.envelope-runs/x.json"  # not this prefix's run state: swept
    store.put(elsewhere, b'{"status": "SUCCESS"}')
    report = Rotation(store, both, prefix=BASE).run()
    assert report.counts["scanned"] == 5 and report.counts["plaintext"] == 2
    audit = scan(store, prefix=BASE)  # the audit hides nothing: listed, not a plaintext result
    assert audit.counts["objects"] == 6 and audit.plaintext_keys.count(elsewhere) == 1
    assert (state.folder + "run.json", "a distributed run's state (docs/scale.md)") in audit.foreign


def test_resume_of_an_unknown_run_says_so(store: S3Store) -> None:
    with pytest.raises(LookupError, match="no run 'nope'"):
        Driver(Outbox(), store, BASE).resume("nope")


def inline_app(make_app: Callable[..., Celery], store: S3Store, **conf: Any) -> Celery:
    """An app whose ``send_task`` runs the shard at once, in-process (a worker's job)."""
    app = make_app(s3_base_path=BASE, **conf)

    def send_task(name: str, args: list[Any], queue: str | None = None) -> None:
        job = args[0]
        run_shard(RunState(store, job["prefix"], job["run_id"]), Context(app=app), job)

    app.send_task = send_task
    app.control.inspect = lambda timeout=None: InlineWorkers()
    return app


class InlineWorkers:
    """What ``app.control.inspect()`` answers for the in-process "worker" of ``inline_app``."""

    def registered(self) -> dict[str, list[str]]:
        return {"inline@localhost": [TASK_NAME]}

    def active_queues(self) -> dict[str, list[dict[str, str]]]:
        return {"inline@localhost": [{"name": "celery"}]}


@pytest.mark.parametrize(
    ("command", "counted"),
    [(["migrate", "--cutoff", "+1h"], "current"), (["scan", "--verify"], "verified")],
)
def test_migrate_and_scan_verify_run_distributed_from_the_command_line(
    store: S3Store,
    keyring: cse.Keyring,
    make_app: Callable[..., Celery],
    command: list[str],
    counted: str,
) -> None:
    keys = filled(store, keyring, 30)
    app = inline_app(make_app, store)
    obj = CLIContext(app=app, no_color=True, workdir=None)
    args = [*command, "--distributed", "--shards", "2", "--json", "--timeout", "30"]
    result = CliRunner().invoke(envelope, args, obj=obj)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document[counted] == len(keys) and document["scanned"] == len(keys) + 1
    assert len(document["shards"]) == 3 * 3 + 1 and "run_id" in document
    # The run's state documents are in the bucket; an audit of the prefix does not trip on them.
    assert any(".envelope-runs/" in info.key for info in store.list(BASE))
    inspected = CliRunner().invoke(envelope, ["inspect", "--json"], obj=obj)
    sources = [json.loads(line)["source"] for line in inspected.stdout.splitlines()]
    assert len(sources) == len(keys) + 1 and not [s for s in sources if ".envelope-runs/" in s]
    resumed = CliRunner().invoke(envelope, [*command, "--resume", document["run_id"]], obj=obj)
    assert resumed.exit_code == 0, resumed.output  # every shard done: nothing sent again
    other = "rotate" if command[0] != "rotate" else "migrate"
    wrong = CliRunner().invoke(envelope, [other, "--resume", document["run_id"]], obj=obj)
    assert wrong.exit_code == 2 and "not " + other in wrong.output


def test_distributed_needs_the_celery_app(store: S3Store) -> None:
    args = ["rotate", "--distributed", "--bucket", store.bucket, "--keyring", "missing.json"]
    result = CliRunner().invoke(envelope, args)
    assert result.exit_code != 0
