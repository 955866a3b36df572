"""Re-wrap every envelope under a prefix to the keyring's active KEK, safely beside live workers.

For each listed object: GET it with its ETag; an envelope under another KEK gets its DEK
unwrapped and re-wrapped (the payload ciphertext is kept), and is PUT back with ``If-Match``
on that ETag. A worker that rewrote the object meanwhile wins: the PUT fails with 412 and the
object is counted as *changed*, never clobbered. Each object is one atomic PUT, so the job can
be interrupted at any point and re-run (or resumed after the last key reported): an object is
always under its old KEK or its new one, never in between.

``rotate_object`` is the per-object step; ``Rotation`` drives it over a listing with a pool of
threads. Both are the engine the local command and any distributed driver share.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from .envelope import is_envelope, unpack
from .errors import EnvelopeError
from .keyring import Keyring
from .pipeline import Pipeline, rewrap
from .store import ObjectInfo, S3Store, is_missing_key, is_write_conflict

DEFAULT_WORKERS = 16


class Outcome(StrEnum):
    REWRAPPED = "rewrapped"  # written under the active KEK (or would be, in a dry run)
    CURRENT = "current"  # already under the active KEK
    CHANGED = "changed"  # rewritten or deleted by someone else meanwhile: left alone
    PLAINTEXT = "plaintext"  # not an envelope (stock backend's plaintext, or foreign): untouched
    FAILED = "failed"  # could not be opened or written: listed with the reason


@dataclass(frozen=True, slots=True)
class ObjectResult:
    key: str
    outcome: Outcome
    kek_id: str | None = None
    reason: str = ""


@dataclass
class RotationReport:
    """What a run did; ``last_key`` is the key after which a resumed run may start."""

    target_kek: str
    dry_run: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    from_keks: Counter[str] = field(default_factory=Counter)
    last_key: str | None = None
    elapsed: float = 0.0

    def add(self, result: ObjectResult) -> None:
        self.counts["scanned"] += 1
        self.counts[result.outcome.value] += 1
        if result.outcome is Outcome.REWRAPPED and result.kek_id:
            self.from_keks[result.kek_id] += 1
        if result.outcome is Outcome.FAILED:
            self.failures.append((result.key, result.reason))

    @property
    def ok(self) -> bool:
        return not self.counts[Outcome.FAILED.value]

    @property
    def rate(self) -> float:
        return self.counts["scanned"] / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_kek": self.target_kek,
            "dry_run": self.dry_run,
            "scanned": self.counts["scanned"],
            **{outcome.value: self.counts[outcome.value] for outcome in Outcome},
            "rewrapped_from": dict(sorted(self.from_keks.items())),
            "failures": [{"key": key, "reason": reason} for key, reason in self.failures],
            "last_key": self.last_key,
            "elapsed_seconds": round(self.elapsed, 3),
            "objects_per_second": round(self.rate, 1),
        }


def rotate_object(
    store: S3Store,
    keyring: Keyring,
    key: str,
    *,
    dry_run: bool = False,
    reencrypt: bool = False,
    verify: bool = False,
    pipeline: Pipeline | None = None,
) -> ObjectResult:
    """Bring one object under the active KEK with a conditional write; never raises for S3 or
    envelope errors (they become the result), so one bad object does not stop a run."""
    try:
        got = store.get_with_etag(key)
    except ClientError as exc:
        return ObjectResult(key, Outcome.FAILED, reason=f"read failed: {_code(exc)}")
    if got is None:
        return ObjectResult(key, Outcome.CHANGED, reason="deleted meanwhile")
    data, etag = got
    if not is_envelope(data):
        return ObjectResult(key, Outcome.PLAINTEXT)
    try:
        kek_id = unpack(data).header.kek_id
        if kek_id == keyring.active.id and not reencrypt:
            return ObjectResult(key, Outcome.CURRENT, kek_id)
        if reencrypt:
            codec = pipeline or Pipeline()
            new = codec.seal(codec.unseal(data, keyring=keyring, key=key), key=key, keyring=keyring)
        else:
            new = rewrap(data, keyring=keyring, key=key)
    except EnvelopeError as exc:
        return ObjectResult(key, Outcome.FAILED, reason=f"{type(exc).__name__}: {exc}")
    if dry_run:
        return ObjectResult(key, Outcome.REWRAPPED, kek_id)
    try:
        store.put(key, new, if_match=etag)
    except ClientError as exc:
        if is_write_conflict(exc) or is_missing_key(exc):
            return ObjectResult(key, Outcome.CHANGED, kek_id, reason="rewritten meanwhile")
        return ObjectResult(key, Outcome.FAILED, kek_id, reason=f"write failed: {_code(exc)}")
    if verify:
        return _verified(store, keyring, key, kek_id, pipeline or Pipeline())
    return ObjectResult(key, Outcome.REWRAPPED, kek_id)


def _verified(
    store: S3Store, keyring: Keyring, key: str, kek_id: str, pipeline: Pipeline
) -> ObjectResult:
    try:
        data = store.get(key)
        if data is not None:  # deleted since: nothing left to verify
            pipeline.unseal(data, keyring=keyring, key=key)
    except (ClientError, EnvelopeError) as exc:
        reason = _code(exc) if isinstance(exc, ClientError) else f"{type(exc).__name__}: {exc}"
        return ObjectResult(key, Outcome.FAILED, kek_id, reason=f"verify failed: {reason}")
    return ObjectResult(key, Outcome.REWRAPPED, kek_id)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


class Rotation:
    """One run over a prefix: listing in key order, a bounded window of concurrent objects."""

    def __init__(
        self,
        store: S3Store,
        keyring: Keyring,
        *,
        prefix: str = "",
        workers: int = DEFAULT_WORKERS,
        dry_run: bool = False,
        reencrypt: bool = False,
        verify: bool = False,
        limit: int | None = None,
        resume_from: str | None = None,
        pipeline: Pipeline | None = None,
        on_result: Callable[[ObjectResult], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        self.store = store
        self.keyring = keyring
        self.prefix = prefix
        self.workers = workers
        self.dry_run = dry_run
        self.reencrypt = reencrypt
        self.verify = verify
        self.limit = limit
        self.resume_from = resume_from
        self.pipeline = pipeline or Pipeline()
        self.on_result = on_result
        self.report: RotationReport | None = None
        """The current run's report, readable even when the run was interrupted."""

    def keys(self) -> Iterator[str]:
        listing: Iterable[ObjectInfo] = self.store.list(self.prefix, start_after=self.resume_from)
        for count, info in enumerate(listing):
            if self.limit is not None and count >= self.limit:
                return
            yield info.key

    def run(self) -> RotationReport:
        """Rotate every object; results are recorded in listing order, so ``last_key`` is always
        a key before which everything was done, even if the run is interrupted."""
        report = self.report = RotationReport(self.keyring.active.id, dry_run=self.dry_run)
        started = time.monotonic()
        window: deque[Future[ObjectResult]] = deque()
        lock = threading.Lock()

        def record(future: Future[ObjectResult]) -> None:
            result = future.result()
            with lock:
                report.add(result)
                report.last_key = result.key
            if self.on_result is not None:
                self.on_result(result)

        with ThreadPoolExecutor(self.workers, thread_name_prefix="rotate") as pool:
            try:
                for key in self.keys():
                    window.append(pool.submit(self._one, key))
                    while len(window) >= self.workers * 4:
                        record(window.popleft())
                while window:
                    record(window.popleft())
            finally:
                for pending in window:
                    pending.cancel()
                report.elapsed = time.monotonic() - started
        return report

    def _one(self, key: str) -> ObjectResult:
        return rotate_object(
            self.store,
            self.keyring,
            key,
            dry_run=self.dry_run,
            reencrypt=self.reencrypt,
            verify=self.verify,
            pipeline=self.pipeline,
        )
