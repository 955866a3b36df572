"""Run ``rotate`` / ``migrate`` / ``verify`` on the app's own Celery workers, one task per shard.

The engine of a distributed run, without Celery's task machinery: the task itself is
``celery_s3_envelope.distributed.sweep_shard``, which calls ``run_shard`` here.

The driver plans shards (``shards.plan_shards``), writes the run's plan to the bucket, sends one
task per shard, and merges the shard reports into the local command's report as shards finish.
A shard task runs the very engine the local command runs (``Rotation`` / ``Migration`` /
``verify_object`` through ``Sweep``) over its own key range only.

State lives in the bucket itself, beside the results (``sweep.RUNS_DIR``; skipped by every sweep
but ``scan``, which lists it as foreign)::

    <prefix>.envelope-runs/<run id>/run.json        the plan and the options (driver)
    <prefix>.envelope-runs/<run id>/shard-<n>.json  counts, last key, state (shard task)

A shard task writes its document at checkpoints and at its end. So ``--resume RUN_ID`` sends
again only the shards not done, and a shard restarts after its last checkpointed key; a shard
task redelivered after its worker died (``acks_late``) does the same. Objects handled twice
(between a checkpoint and the crash) are already under the active KEK: counted as current.
Shard tasks store no Celery result (``ignore_result``): nothing is written into the key ranges
being swept, so the merged report equals the local command's on the same bucket.

Workers must import the task: add ``"celery_s3_envelope.distributed"`` to the app's
``include`` (or ``imports``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from ..keyring import Keyring
from ..pipeline import Pipeline
from ..store import S3Store
from .context import Context
from .migrate import MIGRATE_OUTCOMES, Migration
from .rotate import ROTATE_OUTCOMES, Rotation
from .scan import VERIFY_OUTCOMES, verify_object
from .shards import Shard, plan_shards
from .sweep import RUNS_DIR, ObjectResult, Sweep, SweepReport

TASK_NAME = "celery_s3_envelope.sweep_shard"
OPERATIONS = ("rotate", "migrate", "verify")
CHECKPOINT_EVERY = 1000
CHECKPOINT_SECONDS = 5.0
DONE, FAILED, RUNNING = "done", "failed", "running"


def build_sweep(
    operation: str, store: S3Store, keyring: Keyring, options: dict[str, Any], **sweep: Any
) -> Sweep[ObjectResult, SweepReport]:
    """The engine the local command runs for ``operation``: the only per-object logic."""
    if operation == "rotate":
        return Rotation(
            store,
            keyring,
            dry_run=bool(options.get("dry_run")),
            reencrypt=bool(options.get("reencrypt")),
            verify=bool(options.get("verify")),
            **sweep,
        )
    if operation == "migrate":
        cutoff = datetime.fromisoformat(str(options["cutoff"]))
        return Migration(
            store, keyring, cutoff=cutoff, dry_run=bool(options.get("dry_run")), **sweep
        )
    if operation == "verify":
        step = partial(verify_object, store, keyring, Pipeline())
        return Sweep(store, step, SweepReport("verify", VERIFY_OUTCOMES), **sweep)
    raise ValueError(f"unknown operation {operation!r}")


# -- state in the bucket ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunState:
    """A run's documents under ``<prefix>.envelope-runs/<run id>/``."""

    store: S3Store
    prefix: str
    run_id: str

    @property
    def folder(self) -> str:
        return f"{self.prefix}{RUNS_DIR}{self.run_id}/"

    def _put(self, name: str, document: dict[str, Any]) -> None:
        self.store.put(self.folder + name, json.dumps(document, sort_keys=True).encode())

    def _get(self, name: str) -> dict[str, Any] | None:
        data = self.store.get(self.folder + name)
        return None if data is None else dict(json.loads(data))

    def save_plan(self, plan: dict[str, Any]) -> None:
        self._put("run.json", plan)

    def plan(self) -> dict[str, Any] | None:
        return self._get("run.json")

    def save_shard(self, index: int, document: dict[str, Any]) -> None:
        self._put(f"shard-{index}.json", document)

    def shard(self, index: int) -> dict[str, Any] | None:
        return self._get(f"shard-{index}.json")

    def changed(self, seen: dict[str, str]) -> list[dict[str, Any]]:
        """Shard documents written since last call (one LIST, a GET per changed document)."""
        found = []
        for info in self.store.list(self.folder + "shard-"):
            if seen.get(info.key) != info.etag:
                document = self._get(info.key[len(self.folder) :])
                if document is not None:
                    seen[info.key] = info.etag
                    found.append(document)
        return found


def report_document(report: SweepReport) -> dict[str, Any]:
    """What a shard records: enough to resume it and to merge it."""
    return {
        "counts": dict(report.counts),
        "by_kek": dict(report.by_kek),
        "failures": [list(failure) for failure in report.failures],
        "last_key": report.last_key,
        "elapsed": report.elapsed,
    }


def restore(report: SweepReport, document: dict[str, Any]) -> SweepReport:
    """Add a shard document's counts to ``report`` (a checkpoint resumed, or a merge)."""
    report.counts.update(document.get("counts", {}))
    report.by_kek.update(document.get("by_kek", {}))
    report.failures.extend((str(k), str(r)) for k, r in document.get("failures", []))
    if document.get("last_key") is not None:
        report.last_key = document["last_key"]
    return report


# -- a shard (the task on the workers runs this) -----------------------------------------------


def run_shard(
    state: RunState,
    context: Context,
    job: dict[str, Any],
    *,
    attempt: int = 0,
    retry: Callable[[BaseException], None] | None = None,
) -> str:
    """The shard task's body: sweep from the last checkpoint, checkpointing as it goes."""
    shard = Shard.from_dict(job["shard"])
    previous = state.shard(shard.index) or {}
    if previous.get("state") == DONE:
        return DONE
    base = {"run_id": state.run_id, "shard": shard.to_dict(), "attempt": attempt}

    def save(status: str, report: SweepReport, reason: str = "") -> None:
        document = {**base, "state": status, "reason": reason, **report_document(report)}
        state.save_shard(shard.index, document)

    empty = SweepReport(job["operation"], ())
    try:
        keyring = context.keyring(None)
    except Exception as exc:  # SettingsError and friends: the shard fails, the run says why
        save(FAILED, restore(empty, previous), f"keyring: {exc}")
        return FAILED
    target = job.get("target_kek")
    if target and keyring.active.id != target:
        reason = f"this worker's active KEK is {keyring.active.id!r}, the run's is {target!r}"
        save(FAILED, restore(empty, previous), reason)
        return FAILED
    sweep = build_sweep(
        job["operation"],
        state.store,
        keyring,
        job.get("options", {}),
        prefix=state.prefix,  # the listing is the shard's; the prefix places the run's state
        workers=int(job.get("options", {}).get("workers", 16)),
        listing=partial(shard.objects, state.store, resume_after=previous.get("last_key")),
    )
    report = restore(sweep.report, previous)
    save(RUNNING, report)  # the driver sees the shard start
    since = [0, time.monotonic()]

    def checkpoint(_result: object) -> None:
        since[0] += 1
        if since[0] >= CHECKPOINT_EVERY or time.monotonic() - since[1] >= CHECKPOINT_SECONDS:
            since[:] = [0, time.monotonic()]
            save(RUNNING, report)

    sweep.on_result = checkpoint
    started = time.monotonic()
    try:
        sweep.run()
    except Exception as exc:  # an S3 listing error: retry, then report the shard as failed
        report.elapsed = previous.get("elapsed", 0.0) + time.monotonic() - started
        save(RUNNING, report, f"{type(exc).__name__}: {exc}")
        if retry is not None:
            retry(exc)
        save(FAILED, report, f"{type(exc).__name__}: {exc}")
        return FAILED
    report.elapsed = previous.get("elapsed", 0.0) + time.monotonic() - started
    save(DONE, report)
    return DONE


# -- the driver ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    """The merged report, and each shard's document in plan order."""

    run_id: str
    report: SweepReport
    shards: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = True

    @property
    def failed_shards(self) -> list[dict[str, Any]]:
        return [doc for doc in self.shards if doc.get("state") != DONE]

    @property
    def ok(self) -> bool:
        return self.finished and self.report.ok and not self.failed_shards

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "run_id": self.run_id,
            "shards": [
                {
                    "index": doc["shard"]["index"],
                    "range": Shard.from_dict(doc["shard"]).describe(),
                    "state": doc.get("state", "pending"),
                    "scanned": doc.get("counts", {}).get("scanned", 0),
                    "last_key": doc.get("last_key"),
                    "reason": doc.get("reason", ""),
                }
                for doc in self.shards
            ],
        }


class Driver:
    """Plans a run (or loads one to resume), sends its shards, waits, merges."""

    def __init__(self, app: Any, store: S3Store, prefix: str, *, queue: str | None = None) -> None:
        self.app = app
        self.store = store
        self.prefix = prefix
        self.queue = queue

    def check_workers(self, timeout: float = 3.0) -> None:
        """Before sending anything: some worker answers, and one that has the shard task
        consumes the run's queue; otherwise ``LookupError`` saying what to do (the shards would
        wait for ever)."""
        inspect = self.app.control.inspect(timeout=timeout)
        registered: dict[str, list[str]] = inspect.registered() or {}
        if not registered:
            raise LookupError(
                f"no worker of this app answered within {timeout:g} s: start its workers "
                "before a --distributed run"
            )
        ready = {name for name, tasks in registered.items() if TASK_NAME in (tasks or ())}
        if not ready:
            raise LookupError(
                "no worker has the shard task: add 'celery_s3_envelope.distributed' to the "
                "app's include (or imports) and restart the workers"
            )
        if self.queue is not None:
            queues: dict[str, list[dict[str, Any]]] = inspect.active_queues() or {}
            if not any(
                any(q.get("name") == self.queue for q in queues.get(name) or ()) for name in ready
            ):
                raise LookupError(
                    f"no worker with the shard task consumes queue {self.queue!r}: start one "
                    f"with -Q {self.queue}"
                )

    def start(
        self,
        operation: str,
        keyring: Keyring | None,
        options: dict[str, Any],
        *,
        parts: int = 16,
        key_prefixes: tuple[str, ...] | None = None,
    ) -> RunState:
        """Write the plan and send every shard; returns the run's state."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        state = RunState(self.store, self.prefix, run_id)
        shards = plan_shards(self.prefix, parts=parts, prefixes=key_prefixes)
        plan = {
            "run_id": run_id,
            "operation": operation,
            "bucket": self.store.bucket,
            "prefix": self.prefix,
            "target_kek": keyring.active.id if keyring and operation != "verify" else None,
            "options": options,
            "shards": [shard.to_dict() for shard in shards],
        }
        state.save_plan(plan)
        for shard in shards:
            self._send(plan, shard)
        return state

    def resume(
        self, run_id: str, operation: str | None = None, options: dict[str, Any] | None = None
    ) -> RunState:
        """Send again every shard of ``run_id`` (an ``operation`` run) that is not done.

        The run's documents are plain JSON in the bucket, which a bucket writer can change: what
        decides what the shards do comes from this call instead. ``options`` (the command line's:
        migrate's cutoff, dry run...) replace the stored ones, and a plan for another bucket or
        prefix, or with a shard outside the run's prefix, is refused."""
        state = RunState(self.store, self.prefix, run_id)
        plan = state.plan()
        if plan is None:
            raise LookupError(f"no run {run_id!r} under {state.folder!r}")
        if operation is not None and plan.get("operation") != operation:
            raise LookupError(f"run {run_id!r} is a {plan.get('operation')!r} run, not {operation}")
        shards = [Shard.from_dict(raw) for raw in plan.get("shards", ())]
        if (
            plan.get("bucket") != self.store.bucket
            or plan.get("prefix") != self.prefix
            or not all(shard.prefix.startswith(self.prefix) for shard in shards)
        ):
            raise LookupError(f"run {run_id!r} does not match this bucket and prefix: refused")
        if options is not None:
            plan = {**plan, "options": {**plan.get("options", {}), **options}}
        for shard in shards:
            if (state.shard(shard.index) or {}).get("state") != DONE:
                self._send(plan, shard)
        return state

    def _send(self, plan: dict[str, Any], shard: Shard) -> None:
        job = {key: plan[key] for key in ("run_id", "operation", "bucket", "prefix", "options")}
        job["target_kek"] = plan["target_kek"]
        job["shard"] = shard.to_dict()
        self.app.send_task(TASK_NAME, args=[job], queue=self.queue)

    def wait(
        self,
        state: RunState,
        *,
        timeout: float | None = None,
        poll: float = 0.5,
        on_shard: Callable[[dict[str, Any], int, int], None] | None = None,
        silence: float = 60.0,
        on_silence: Callable[[], None] | None = None,
    ) -> RunResult:
        """Poll the shard documents until every shard is done or failed (or ``timeout``);
        ``on_silence`` once if no shard has started after ``silence`` seconds."""
        plan = state.plan()
        assert plan is not None
        total = len(plan["shards"])
        started = time.monotonic()
        latest: dict[int, dict[str, Any]] = {}
        seen: dict[str, str] = {}
        finished = False
        while True:
            for document in state.changed(seen):
                index = int(document["shard"]["index"])
                was = latest.get(index, {}).get("state")
                latest[index] = document
                if document["state"] in (DONE, FAILED) and was not in (DONE, FAILED):
                    ended = sum(doc["state"] in (DONE, FAILED) for doc in latest.values())
                    if on_shard is not None:
                        on_shard(document, ended, total)
            if sum(doc["state"] in (DONE, FAILED) for doc in latest.values()) == total:
                finished = True
                break
            waited = time.monotonic() - started
            if timeout is not None and waited > timeout:
                break
            if not latest and waited > silence and on_silence is not None:
                on_silence()
                on_silence = None
            time.sleep(poll)
        return merge(plan, latest, elapsed=time.monotonic() - started, finished=finished)


def merge(
    plan: dict[str, Any],
    documents: dict[int, dict[str, Any]],
    *,
    elapsed: float,
    finished: bool = True,
) -> RunResult:
    """The local command's report from the shard documents, in key order (plan order)."""
    outcomes = {"rotate": ROTATE_OUTCOMES, "migrate": MIGRATE_OUTCOMES, "verify": VERIFY_OUTCOMES}
    operation = plan["operation"]
    options = plan.get("options", {})
    report = SweepReport(
        operation,
        outcomes[operation],
        target_kek=plan.get("target_kek"),
        dry_run=bool(options.get("dry_run")) and operation != "verify",
    )
    shards: list[dict[str, Any]] = []
    for raw in plan["shards"]:
        document = documents.get(int(raw["index"]), {"shard": raw, "state": "pending"})
        restore(report, document)
        shards.append(document)
    report.elapsed = elapsed
    return RunResult(plan["run_id"], report, shards, finished)
