"""Audit scan, verification and migration from the stock backend's plaintext results."""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery

import celery_s3_envelope as cse
from celery_s3_envelope.ops.migrate import Migration
from celery_s3_envelope.ops.scan import HEADER_PROBE, State, failure_classes, scan, verify
from celery_s3_envelope.ops.sweep import Outcome
from celery_s3_envelope.store import S3Store
from support.keys import two_keyrings
from support.s3 import S3Endpoint

BASE = "results/"
SWITCHED = datetime.now(UTC) + timedelta(days=1)
"""migrate's cutoff: the deployment switched after every stock result these tests write."""


@dataclass
class WireReads:
    gets: list[tuple[str, str | None]] = field(default_factory=list)
    """(URL, Range header) of every GetObject request sent."""
    body_bytes: Counter[str] = field(default_factory=Counter)
    """Object key -> body bytes S3 sent back (Content-Length), over all GetObject calls."""


@contextmanager
def wire_reads(client: Any) -> Iterator[WireReads]:
    """Count what ``client``'s GetObject calls put on the wire, whichever store method made them."""
    seen = WireReads()
    lock = threading.Lock()

    def note_key(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["wire_reads_key"] = params["Key"]

    def sent(request: Any, **_: Any) -> None:
        value = request.headers.get("Range")
        seen.gets.append((request.url, value.decode() if isinstance(value, bytes) else value))

    def received(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        with lock:
            seen.body_bytes[context["wire_reads_key"]] += int(parsed["ContentLength"])

    handlers = (
        ("before-parameter-build.s3.GetObject", note_key),
        ("before-send.s3.GetObject", sent),
        ("after-call.s3.GetObject", received),
    )
    for event, handler in handlers:
        client.meta.events.register(event, handler)
    try:
        yield seen
    finally:
        for event, handler in handlers:
            client.meta.events.unregister(event, handler)


@pytest.fixture
def keyrings() -> tuple[cse.Keyring, cse.Keyring]:
    """(k1 active), (k1 decrypt, k2 active)."""
    return two_keyrings()


def stock_app(s3_endpoint: S3Endpoint, bucket: str, **conf: Any) -> Celery:
    app = Celery("stock", set_as_current=False)
    app.conf.update(result_backend="s3", s3_base_path=BASE, **s3_endpoint.settings(bucket), **conf)
    return app


def seal_many(store: S3Store, keyring: cse.Keyring, keys: list[str]) -> None:
    def put(key: str) -> None:
        store.put(
            key, cse.seal(f'{{"status": "SUCCESS", "result": "{key}"}}', key=key, keyring=keyring)
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))


@pytest.fixture
def mixed_bucket(
    request: pytest.FixtureRequest,
    s3_endpoint: S3Endpoint,
    bucket: str,
    store: S3Store,
    keyrings: tuple[cse.Keyring, cse.Keyring],
) -> dict[str, Any]:
    """N results written by Celery's own S3 backend, N sealed under k1, N under k2, 5 junk
    (N = 300 unless the test is parametrized indirectly with another count)."""
    count = getattr(request, "param", 300)
    stock = stock_app(s3_endpoint, bucket).backend
    stock_ids = [str(uuid.uuid4()) for _ in range(count)]
    for i, task_id in enumerate(stock_ids):
        stock.store_result(task_id, {"n": i, "note": "written before the switch"}, "SUCCESS")
    k1_only, both = keyrings
    k1_keys = [f"{BASE}celery-task-meta-{uuid.uuid4()}" for _ in range(count)]
    k2_keys = [f"{BASE}celery-task-meta-{uuid.uuid4()}" for _ in range(count)]
    seal_many(store, k1_only, k1_keys)
    seal_many(store, both, k2_keys)
    junk = [f"{BASE}junk/{i}.bin" for i in range(5)]
    for key in junk:
        store.put(key, b"\xff\xfe" + os.urandom(300))
    stock_values = {task_id: stock.get(stock.get_key_for_task(task_id)) for task_id in stock_ids}
    return {"stock_ids": stock_ids, "stock_values": stock_values, "junk": junk, "count": count}


def test_scan_counts_each_kind_then_migrate_leaves_no_plaintext(
    s3_endpoint: S3Endpoint,
    bucket: str,
    store: S3Store,
    mixed_bucket: dict[str, Any],
    keyrings: tuple[cse.Keyring, cse.Keyring],
    make_app: Callable[..., Celery],
) -> None:
    """One bucket of 300 stock results, 300 under k1, 300 under k2 and 5 junk objects."""
    with wire_reads(store.client) as wire:
        report = scan(store, prefix=BASE)

    counts = report.to_dict()
    assert (counts["objects"], counts["sealed"], counts["plaintext"], counts["foreign"]) == (
        905,
        600,
        300,
        5,
    )
    by_kek = {(g["kek_id"], g["version"]): g["objects"] for g in counts["sealed_by_kek"]}
    assert by_kek == {("k1", 1): 300, ("k2", 1): 300}
    assert report.plaintext_found and sorted(k for k, _ in report.foreign) == mixed_bucket["junk"]
    # What went over the wire: one GetObject per object, each with a Range header, and no more
    # body bytes than the header probe; a sealed object is never read in full.
    assert len(wire.gets) == 905 and all(rng for _, rng in wire.gets), wire.gets[:3]
    sizes = {info.key: info.size for info in store.list(BASE)}
    assert set(wire.body_bytes) == set(sizes)
    bodies = store.get_many(sizes)
    for key, count in wire.body_bytes.items():
        probe = min(sizes[key], HEADER_PROBE + len(key.encode()))
        data = bodies[key] or b""
        if data[:4] == b"\xe5CSE":
            assert count <= max(cse.inspect(data).header_size, probe), (key, count)
            assert count < sizes[key], (key, count)  # the payload stays on the server
        else:
            assert count <= probe, (key, count)

    # Then migrate, with a live worker rewriting ten of the stock results meanwhile.
    _, both = keyrings
    stock_ids: list[str] = mixed_bucket["stock_ids"]
    raced_ids = set(stock_ids[:10])
    ours = make_app(s3_base_path=BASE, envelope_keyring=both).backend
    original_get = store.fetch

    def get_then_worker_writes(key: str) -> Any:
        got = original_get(key)
        task_id = key.rsplit("celery-task-meta-", 1)[-1]
        if task_id in raced_ids:  # a live worker stores this task's result again meanwhile
            thread = threading.Thread(
                target=ours.store_result, args=(task_id, {"rerun": True}, "SUCCESS")
            )
            thread.start()
            thread.join()
        return got

    store.fetch = get_then_worker_writes  # type: ignore[method-assign]
    report = Migration(store, both, cutoff=SWITCHED, prefix=BASE, workers=8).run()
    store.fetch = original_get  # type: ignore[method-assign]

    assert report.ok, report.failures
    assert report.counts[Outcome.SEALED] == 290 and report.counts[Outcome.CHANGED] == 10
    assert report.counts[Outcome.CURRENT] == 600 and report.counts[Outcome.FOREIGN] == 5
    after = scan(store, prefix=BASE)
    assert after.counts[State.PLAINTEXT.value] == 0 and after.counts[State.SEALED.value] == 900
    for task_id in stock_ids:
        meta = ours.get_task_meta(task_id)
        if task_id in raced_ids:
            assert meta["result"] == {"rerun": True}  # the worker's write survived
        else:
            key = ours.get_key_for_task(task_id)
            assert ours.get(key) == mixed_bucket["stock_values"][task_id]
            assert meta["result"]["note"] == "written before the switch"


@pytest.mark.parametrize("mixed_bucket", [30], indirect=True)
def test_verify_opens_every_sealed_object_and_counts_failures_by_reason(
    store: S3Store, mixed_bucket: dict[str, Any], keyrings: tuple[cse.Keyring, cse.Keyring]
) -> None:
    _, both = keyrings
    sealed = [i.key for i in store.list(BASE) if (store.get(i.key) or b"")[:4] == b"\xe5CSE"]
    tampered = bytearray(store.get(sealed[0]) or b"")
    tampered[-1] ^= 1
    store.put(sealed[0], bytes(tampered))

    report = verify(store, both, prefix=BASE)

    assert report.counts[Outcome.VERIFIED] == 59
    assert report.counts[Outcome.PLAINTEXT] == 30 and report.counts[Outcome.FOREIGN] == 5
    assert failure_classes(report) == {"IntegrityError": 1}
    assert report.failures[0][0] == sealed[0]


def test_scan_survives_an_object_s3_refuses_to_serve(store: S3Store, bucket: str) -> None:
    keyring = cse.Keyring.generate("k1")
    for i in range(3):
        key = f"results/celery-task-meta-{i}"
        store.put(key, cse.seal(f"value {i}", key=key, keyring=keyring))
    archived = "results/celery-task-meta-archived"
    store.put(archived, b'{"status": "SUCCESS", "result": "plaintext in the archive tier"}')

    def refuse(request: Any, **_: Any) -> Any:  # what S3 answers for an object in GLACIER
        if not request.url.split("?")[0].endswith(archived):
            return None
        from botocore.awsrequest import AWSResponse

        from support.s3 import RawBody

        body = b"<Error><Code>InvalidObjectState</Code><Message>archived</Message></Error>"
        return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, RawBody(body))

    store.client.meta.events.register_first("before-send.s3.GetObject", refuse)
    report = scan(store, prefix="results/", workers=2)
    store.client.meta.events.unregister("before-send.s3.GetObject", refuse)
    assert report.counts["objects"] == 4 and report.counts["sealed"] == 3


def test_verify_counts_a_damaged_envelope_as_failed(store: S3Store) -> None:
    from celery_s3_envelope.ops.scan import verify

    keyring = cse.Keyring.generate("k1")
    good, damaged = "results/celery-task-meta-good", "results/celery-task-meta-damaged"
    store.put(good, cse.seal("ok", key=good, keyring=keyring))
    store.put(damaged, cse.seal("lost", key=damaged, keyring=keyring)[:60])  # cut in its header
    report = verify(store, keyring, prefix="results/", workers=2)
    assert report.counts[Outcome.VERIFIED.value] == 1
    assert report.counts[Outcome.FAILED.value] == 1 and not report.ok


@pytest.mark.parametrize("mixed_bucket", [30], indirect=True)
def test_migrate_dry_run_writes_nothing(
    store: S3Store, mixed_bucket: dict[str, Any], keyrings: tuple[cse.Keyring, cse.Keyring]
) -> None:
    before = {info.key: info.etag for info in store.list(BASE)}
    report = Migration(store, keyrings[1], cutoff=SWITCHED, prefix=BASE, dry_run=True).run()
    assert report.counts[Outcome.SEALED] == 30
    assert {info.key: info.etag for info in store.list(BASE)} == before


def test_migrate_seals_only_celery_result_keys_and_leaves_other_files_byte_identical(
    s3_endpoint: S3Endpoint,
    bucket: str,
    store: S3Store,
    keyrings: tuple[cse.Keyring, cse.Keyring],
    make_app: Callable[..., Celery],
) -> None:
    """A README or a JSON config kept under the prefix is text, not a result: never sealed."""
    readme, config = f"{BASE}README.md", f"{BASE}config/settings.json"
    others = {
        readme: b"# Results bucket\n\nWritten by the billing workers.\n",
        config: b'{"status": "SUCCESS", "retention_days": 30}',
    }
    for key, body in others.items():
        store.put(key, body)
    stock = stock_app(s3_endpoint, bucket).backend
    stock.store_result("legacy-1", {"n": 1}, "SUCCESS")
    prefixed = f"{BASE}billing_celery-task-meta-legacy-2"  # under a global_keyprefix
    store.put(prefixed, b'{"status": "SUCCESS", "result": 2}')
    etags = {info.key: info.etag for info in store.list(BASE)}

    report = Migration(store, keyrings[1], cutoff=SWITCHED, prefix=BASE).run()

    assert report.ok, report.failures
    assert report.counts[Outcome.SEALED] == 2 and report.counts[Outcome.FOREIGN] == 2
    for key, body in others.items():
        assert store.get(key) == body
    assert {info.key: info.etag for info in store.list(BASE) if info.key in others} == {
        key: etags[key] for key in others
    }
    ours = make_app(s3_base_path=BASE, envelope_keyring=keyrings[1]).backend
    assert ours.get_task_meta("legacy-1")["result"] == {"n": 1}  # sealed, and still the value
    assert cse.inspect(store.get(prefixed) or b"").kek_id == "k2"
