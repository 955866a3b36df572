"""``migrate`` seals only plaintext written before the cutoff, the moment the deployment switched
off Celery's S3 backend: plaintext written later (a forgery planted for migration to seal, or a
sealed result replaced by plaintext) is reported suspicious, left unsealed, and the run exits 1
(docs/migration.md, docs/security.md)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.ops.context import Context
from celery_s3_envelope.ops.migrate import Migration
from celery_s3_envelope.ops.runs import Driver, RunState, run_shard
from celery_s3_envelope.ops.sweep import Outcome
from celery_s3_envelope.store import Fetched, S3Store
from support.apps import MakeApp
from support.cli import invoke
from support.s3 import S3Endpoint

BASE = "results/"
STOCK = f"{BASE}celery-task-meta-stock"
FORGED = f"{BASE}celery-task-meta-forged"
REPLACED = f"{BASE}celery-task-meta-replaced"
LATE = f"{BASE}celery-task-meta-late"
STOCK_VALUE = b'{"status": "SUCCESS", "result": "from the stock backend"}'
FORGED_VALUE = b'{"status": "SUCCESS", "result": "planted by a bucket writer"}'


def tick() -> None:
    """S3 keeps LastModified to the second: step over one."""
    time.sleep(1.1)


@pytest.fixture
def switched(store: S3Store, keyring: cse.Keyring) -> datetime:
    """A stock result; the switch; then a sealed result replaced by plaintext, and a forgery."""
    store.put(STOCK, STOCK_VALUE)
    tick()
    cutoff = datetime.now(UTC)
    tick()
    store.put(REPLACED, cse.seal("sealed by a new worker", key=REPLACED, keyring=keyring))
    store.put(REPLACED, FORGED_VALUE)
    store.put(FORGED, FORGED_VALUE)
    return cutoff


def test_only_plaintext_older_than_the_cutoff_is_sealed(
    store: S3Store, keyring: cse.Keyring, switched: datetime
) -> None:
    report = Migration(store, keyring, cutoff=switched, prefix=BASE).run()
    assert report.counts[Outcome.SEALED.value] == 1
    assert report.counts[Outcome.SUSPICIOUS.value] == 2
    assert not report.ok
    assert cse.unseal(store.get(STOCK) or b"", keyring=keyring, key=STOCK) == STOCK_VALUE.decode()
    for key in (FORGED, REPLACED):
        assert store.get(key) == FORGED_VALUE  # left as it is: never sealed
    reasons = dict(report.failures)
    assert set(reasons) == {FORGED, REPLACED}
    assert all("after the cutoff" in reason for reason in reasons.values())


def test_a_write_between_listing_and_reading_is_judged_by_the_version_read(
    store: S3Store, keyring: cse.Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing says 'old'; the object read (and overwritten with If-Match) is new."""
    store.put(LATE, STOCK_VALUE)
    tick()
    cutoff = datetime.now(UTC)
    tick()
    fetch = store.fetch

    def planted_meanwhile(key: str) -> Fetched | None:
        store.put(key, FORGED_VALUE)
        return fetch(key)

    listed = list(store.list(BASE))
    assert all(info.last_modified < cutoff for info in listed)
    monkeypatch.setattr(store, "fetch", planted_meanwhile)
    report = Migration(store, keyring, cutoff=cutoff, prefix=BASE, workers=1).run()
    assert report.counts[Outcome.SUSPICIOUS.value] == 1 and report.counts["sealed"] == 0
    assert store.get(LATE) == FORGED_VALUE


def test_the_command_reports_them_and_exits_1(
    s3_endpoint: S3Endpoint, store: S3Store, keyring_file: object, switched: datetime
) -> None:
    args = ["--bucket", store.bucket, "--prefix", BASE, "--endpoint-url", s3_endpoint.endpoint_url]
    args += ["--keyring", str(keyring_file), "--region", s3_endpoint.region]
    env = {"AWS_ACCESS_KEY_ID": s3_endpoint.access_key_id}
    env["AWS_SECRET_ACCESS_KEY"] = s3_endpoint.secret_access_key
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        missing = invoke(envelope, "migrate", *args)
        assert missing.exit_code == 2 and "--cutoff" in missing.stderr
        result = invoke(envelope, "migrate", *args, "--cutoff", switched.isoformat(), "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["sealed"] == 1 and document["suspicious"] == 2
    assert {f["key"] for f in document["failures"]} == {FORGED, REPLACED}


def test_a_resumed_distributed_run_takes_the_cutoff_from_the_command_not_the_bucket(
    store: S3Store, keyring: cse.Keyring, switched: datetime, make_app: MakeApp
) -> None:
    """The run's plan is plain JSON in the bucket: a writer who moves its cutoff to year 9999
    must not get a forgery sealed when the operator resumes the run with the real cutoff."""
    jobs: list[dict[str, Any]] = []
    app = make_app(s3_base_path=BASE)
    app.send_task = lambda name, args, queue=None: jobs.append(args[0])  # type: ignore[method-assign]
    options = {"workers": 1, "dry_run": False, "cutoff": switched.isoformat()}
    state = Driver(app, store, BASE).start("migrate", keyring, options, parts=1)
    plan = state.plan() or {}
    plan["options"]["cutoff"] = "9999-12-31T00:00:00+00:00"  # the bucket writer's edit
    state.save_plan(plan)

    def run_now(name: str, args: list[Any], queue: str | None = None) -> None:
        job = args[0]
        run_shard(RunState(store, job["prefix"], job["run_id"]), Context(app=app), job)

    app.send_task = run_now  # type: ignore[method-assign]
    Driver(app, store, BASE).resume(state.run_id, "migrate", options)
    assert store.get(FORGED) == FORGED_VALUE and store.get(REPLACED) == FORGED_VALUE
    assert cse.inspect(store.get(STOCK) or b"").kek_id == keyring.active.id
    forged_plan = {**plan, "prefix": "elsewhere/"}
    state.save_plan(forged_plan)
    with pytest.raises(LookupError, match="does not match"):
        Driver(app, store, BASE).resume(state.run_id, "migrate", options)
