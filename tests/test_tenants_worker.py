"""Shredding is exact (issue 21): 1,000 tenants get results from a real prefork worker whose
tenant selector reads the task's ``tenant`` argument; one tenant is shredded; then EVERY object
under the prefix is read: exactly that tenant's results read as shredded, every other result
opens, and ``scan`` counts the shredded ones apart from damaged ones."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from celery.result import ResultSet

import celery_s3_envelope as cse
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.errors import ShreddedKey
from celery_s3_envelope.tenants import KEY_STORE_DIR
from support.apps import backend_of
from support.cli import invoke
from support.e2e_app import secret
from support.s3 import S3Endpoint
from support.worker import BASE_PATH, running_worker

TENANTS = 1000
SHREDDED = "tenant-0421"
EXTRA = 4  # more results for the shredded tenant, so "exactly its results" means several
TIMEOUT = 240.0


def test_shredding_one_of_1000_tenants_is_exact(
    s3_endpoint: S3Endpoint, bucket: str, keyring_file: Path, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    started = time.monotonic()
    with running_worker(
        s3_endpoint,
        bucket,
        keyring_file,
        tmp_path,
        concurrency=2,
        envelope_tenant_selector="support.e2e_app:tenant_of",
        worker_prefetch_multiplier=16,
    ) as worker:
        app = worker.app
        task = app.tasks["e2e.tenant_echo"]
        sent = {}
        for number in range(TENANTS + EXTRA):
            tenant = f"tenant-{number:04d}" if number < TENANTS else SHREDDED
            sent[task.delay(number, token, tenant=tenant).id] = (tenant, number)
        # Wait on the listing (one request a poll), not on 1,004 reads a poll.
        store = backend_of(app).store
        deadline = time.monotonic() + TIMEOUT
        while sum(1 for _ in store.list(BASE_PATH + "celery-task-meta-")) < len(sent):
            worker.check()
            assert time.monotonic() < deadline, "the worker did not store every result in time"
            time.sleep(0.5)
        results = ResultSet([app.AsyncResult(task_id) for task_id in sent], app=app)
        results.join_native(timeout=TIMEOUT, on_interval=worker.check)  # every one a SUCCESS
    ran = time.monotonic() - started
    print(f"\n{TENANTS + EXTRA} tasks for {TENANTS} tenants through the worker in {ran:.1f} s")

    shred = invoke(envelope, "shred", "--tenant", SHREDDED, "--yes", app=app)
    assert shred.exit_code == 0, shred.output

    cached = backend_of(app)  # joined the results above: holds every tenant's KEK in cache
    assert cached.tenant_keys.cached() > 0
    reader = EnvelopeS3Backend(app=app)  # a fresh process's view: nothing cached
    store = reader.store
    listed = [info.key for info in store.list(BASE_PATH)]
    results_keys = [key for key in listed if not key.startswith(BASE_PATH + KEY_STORE_DIR)]
    assert len(results_keys) == TENANTS + EXTRA
    bodies = store.get_many(results_keys)
    shredded, opened = set(), set()
    for key, body in bodies.items():
        assert body is not None
        task_id = key.removeprefix(BASE_PATH + "celery-task-meta-")
        tenant, number = sent[task_id]
        assert cse.inspect(body).kek_id == f"t/{tenant}/1"
        try:
            meta = reader.decode(reader._open(key, body))
        except ShreddedKey:
            shredded.add(task_id)
            continue
        assert meta["result"] == {"number": number, "secret": secret("result", token, number)}
        opened.add(task_id)
    expected = {task_id for task_id, (tenant, _) in sent.items() if tenant == SHREDDED}
    assert shredded == expected and len(expected) == EXTRA + 1
    assert opened == set(sent) - expected

    scanned = invoke(envelope, "scan", "--json", app=app)
    assert scanned.exit_code == 0, scanned.output
    report = json.loads(scanned.output)
    assert report["shredded"] == EXTRA + 1
    tenants = {row["tenant"]: row for row in report["tenants"]}
    assert len(tenants) == TENANTS
    assert [t for t, row in tenants.items() if row["shredded"]] == [SHREDDED]
    assert report["plaintext"] == 0 and report["unreadable"] == 0
