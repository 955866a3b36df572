"""The bucket-wide driver shared by ``rotate``, ``migrate``, ``scan`` and ``scan --verify``.

A sweep lists a prefix in key order (constant memory), runs a per-object step on a pool of
threads with a bounded window of objects in flight, and records results *in listing order*: so
the report's ``last_key`` is always a key up to which everything is finished, and a run that was
interrupted resumes after it (``resume_from``). A step never raises for S3 or envelope errors: it
returns an ``ObjectResult`` saying what happened, so one bad object does not stop a run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..errors import EnvelopeError, error_code
from ..tenants import KEY_STORE_DIR

if TYPE_CHECKING:  # botocore only where S3 is used: offline decode imports this module too
    from ..store import ObjectInfo, S3Store

DEFAULT_WORKERS = 16
RUNS_DIR = ".envelope-runs/"
"""Where a distributed run keeps its state (``<prefix>.envelope-runs/<run id>/``)."""


def holds_run_state(key: str) -> bool:
    """Any distributed run's state document, whatever prefix the run had: what ``inspect`` and
    ``decode`` of a prefix leave out (``scan`` lists them, as foreign, with their reason)."""
    return RUNS_DIR in key


def is_key_store(key: str, prefix: str) -> bool:
    """A tenant key store's record under ``prefix``, at any depth (a scan of the whole bucket
    meets the store of every prefix below it): no sweep touches it (``migrate`` must never seal
    it, ``rotate`` never rewrap it), and ``scan`` lists it as foreign with that reason."""
    return key.startswith(prefix) and f"/{KEY_STORE_DIR}" in f"/{key[len(prefix) :]}"


def is_run_state(key: str, prefix: str) -> bool:
    """A distributed run's own state document under ``prefix``: no writing command touches it,
    ``verify`` skips it, and ``scan`` lists it as foreign with that reason (never hidden)."""
    return key.startswith(prefix + RUNS_DIR)


class Outcome(StrEnum):
    REWRAPPED = "rewrapped"  # rotate: now under the active KEK (or would be, in a dry run)
    SEALED = "sealed"  # migrate: a plaintext object sealed in place (or would be)
    VERIFIED = "verified"  # scan --verify: opened with the keyring
    CURRENT = "current"  # nothing to do: already under the active KEK / already sealed
    CHANGED = "changed"  # rewritten or deleted by someone else meanwhile: left alone
    PLAINTEXT = "plaintext"  # not an envelope (e.g. the stock backend's results): untouched
    FOREIGN = "foreign"  # neither an envelope nor a Celery result: untouched
    FAILED = "failed"  # could not be opened or written: listed with the reason
    SUSPICIOUS = "suspicious"  # migrate: plaintext newer than the cutoff, not sealed: listed
    SKIPPED = "skipped"  # rotate: under a KEK this run leaves alone (another tenant's, or a
    # tenant's when the run rotates the keyring's KEKs)
    SHREDDED = "shredded"  # scan --verify: its tenant's KEK was shredded (not damage)


@dataclass(frozen=True, slots=True)
class ObjectResult:
    key: str
    outcome: Outcome
    kek_id: str | None = None
    reason: str = ""


@dataclass
class SweepReport:
    """What a run did, in the shape every bucket-wide command prints (text or ``--json``)."""

    operation: str
    outcomes: tuple[Outcome, ...]
    target_kek: str | None = None
    dry_run: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    by_kek: Counter[str] = field(default_factory=Counter)
    last_key: str | None = None
    elapsed: float = 0.0

    def add(self, result: ObjectResult) -> None:
        self.counts["scanned"] += 1
        self.counts[result.outcome.value] += 1
        if result.kek_id and result.outcome in (
            Outcome.REWRAPPED,
            Outcome.SEALED,
            Outcome.VERIFIED,
        ):
            self.by_kek[result.kek_id] += 1
        if result.outcome in (Outcome.FAILED, Outcome.SUSPICIOUS):
            self.failures.append((result.key, result.reason))

    @property
    def ok(self) -> bool:
        return not (self.counts[Outcome.FAILED.value] or self.counts[Outcome.SUSPICIOUS.value])

    @property
    def rate(self) -> float:
        return self.counts["scanned"] / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "target_kek": self.target_kek,
            "dry_run": self.dry_run,
            "scanned": self.counts["scanned"],
            **{outcome.value: self.counts[outcome.value] for outcome in self.outcomes},
            "by_kek": dict(sorted(self.by_kek.items())),
            "failures": [{"key": key, "reason": reason} for key, reason in self.failures],
            "last_key": self.last_key,
            "elapsed_seconds": round(self.elapsed, 3),
            "objects_per_second": round(self.rate, 1),
        }


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a report: the S3 error code, or the envelope error and message."""
    from botocore.exceptions import ClientError  # only when S3 failed: decode imports this module

    if isinstance(exc, ClientError):
        return error_code(exc) or "Unknown"
    if isinstance(exc, EnvelopeError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


R = TypeVar("R", bound=Keyed)
R_contra = TypeVar("R_contra", bound=Keyed, contravariant=True)


class Recorder(Protocol[R_contra]):
    """What a sweep reports into: ``SweepReport`` for the writing commands, the scan's own."""

    operation: str
    last_key: str | None
    elapsed: float

    def add(self, result: R_contra, /) -> None: ...


Rep = TypeVar("Rep", bound="Recorder[Any]")


class Sweep(Generic[R, Rep]):
    """Run ``step`` on every object under ``prefix`` (after ``resume_from``, at most ``limit``)."""

    def __init__(
        self,
        store: S3Store,
        step: Callable[[ObjectInfo], R],
        report: Rep,
        *,
        prefix: str = "",
        workers: int = DEFAULT_WORKERS,
        limit: int | None = None,
        resume_from: str | None = None,
        on_result: Callable[[R], None] | None = None,
        listing: Callable[[], Iterable[ObjectInfo]] | None = None,
        skip_run_state: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        self.store = store
        self.step = step
        self.report = report
        self.prefix = prefix
        self.workers = workers
        self.limit = limit
        self.resume_from = resume_from
        self.on_result = on_result
        self.listing = listing
        """The objects in key order instead of the prefix's listing (a distributed shard's)."""
        self.skip_run_state = skip_run_state

    def objects(self) -> Iterator[ObjectInfo]:
        if self.listing is not None:
            listing: Iterable[ObjectInfo] = self.listing()
        else:
            listing = self.store.list(self.prefix, start_after=self.resume_from)
        count = 0
        for info in listing:
            if self.skip_run_state and (
                is_run_state(info.key, self.prefix) or is_key_store(info.key, self.prefix)
            ):
                continue
            if self.limit is not None and count >= self.limit:
                return
            count += 1
            yield info

    def run(self) -> Rep:
        """Run to the end; on an unexpected exception ``self.report`` still holds what was done."""
        report = self.report
        started = time.monotonic()
        window: deque[Future[R]] = deque()
        lock = threading.Lock()

        def record(future: Future[R]) -> None:
            result = future.result()
            with lock:
                report.add(result)
                report.last_key = result.key
            if self.on_result is not None:
                self.on_result(result)

        with ThreadPoolExecutor(self.workers, thread_name_prefix=report.operation) as pool:
            try:
                for info in self.objects():
                    window.append(pool.submit(self.step, info))
                    while len(window) >= self.workers * 4:
                        record(window.popleft())
                while window:
                    record(window.popleft())
            finally:
                for pending in window:
                    pending.cancel()
                report.elapsed = time.monotonic() - started
        return report
