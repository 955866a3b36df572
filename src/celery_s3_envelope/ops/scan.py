"""The audit: ``scan`` and its ``--verify`` step, and ``classify``, which ``migrate`` shares.

``scan`` proves to an auditor what the bucket holds without any key: it lists the prefix and
reads only each object's header with ranged GETs (``read_head``, which ``inspect`` uses too).
With a keyring, ``verify_object`` opens each object in full. Both run on ``sweep.Sweep``.

How an object is classified (``classify``):
- *sealed*: it starts with the envelope magic and its header parses;
- *plaintext*: not an envelope, and either its key has a Celery result prefix
  (``celery-task-meta-``, ``celery-taskset-meta-``, ``chord-unlock-``) or its first bytes are
  UTF-8 text or a pickle stream: what a Celery serializer writes. Counted as a finding;
- *foreign*: anything else (binary data of unknown format, or an envelope of an unknown version
  or with a malformed header): counted, never touched;
- *unreadable*: S3 refused to serve it (an archived storage class, access denied): its state is
  unknown, which an audit must report rather than skip.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from ..envelope import PREAMBLE_SIZE, EnvelopeHeader, header_length, is_envelope, unpack
from ..errors import EnvelopeError, ShreddedKey
from ..keyring import KeySource
from ..pipeline import Pipeline
from ..store import ObjectInfo, S3Store
from ..tenants import tenant_of_kek_id
from .celery_keys import is_celery_result_key
from .sweep import (
    DEFAULT_WORKERS,
    ObjectResult,
    Outcome,
    Sweep,
    SweepReport,
    describe_error,
    is_key_store,
    is_run_state,
)

HEADER_PROBE = 128
"""Bytes read beyond the object key's length: a whole local-KEK header for KEK ids up to 18
bytes (110 + key + id). A longer header (long id, KMS slot) costs one more ranged GET."""


class State(StrEnum):
    SEALED = "sealed"
    PLAINTEXT = "plaintext"
    FOREIGN = "foreign"
    UNREADABLE = "unreadable"  # S3 would not serve it (archived, access denied...): unknown


def looks_like_celery_plaintext(key: str, head: bytes) -> bool:
    """True for what the stock backend writes: a Celery result key, or text / pickle bytes."""
    if is_celery_result_key(key):
        return True
    if head[:1] == b"\x80":  # pickle protocol 2+
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def classify(key: str, head: bytes) -> tuple[State, EnvelopeHeader | None, str]:
    """The object's state from its first bytes (a whole header for sealed objects)."""
    if is_envelope(head):
        try:
            return State.SEALED, unpack(head, header_only=True).header, ""
        except EnvelopeError as exc:
            return State.FOREIGN, None, describe_error(exc)
    if looks_like_celery_plaintext(key, head):
        return State.PLAINTEXT, None, ""
    return State.FOREIGN, None, "unknown format"


# -- scan -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanEntry:
    key: str
    state: State
    size: int
    last_modified: datetime
    header: EnvelopeHeader | None = None
    reason: str = ""


@dataclass
class KekSummary:
    objects: int = 0
    stored_bytes: int = 0
    payload_bytes: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, entry: ScanEntry, payload_size: int) -> None:
        self.objects += 1
        self.stored_bytes += entry.size
        self.payload_bytes += payload_size
        if self.oldest is None or entry.last_modified < self.oldest:
            self.oldest = entry.last_modified
        if self.newest is None or entry.last_modified > self.newest:
            self.newest = entry.last_modified


@dataclass
class ScanReport:
    """Counts by state, sealed objects by (KEK id, format version); no keys needed."""

    operation: str = "scan"
    counts: Counter[str] = field(default_factory=Counter)
    stored_bytes: Counter[str] = field(default_factory=Counter)
    by_kek: dict[tuple[str, int], KekSummary] = field(default_factory=dict)
    plaintext_keys: list[str] = field(default_factory=list)
    foreign: list[tuple[str, str]] = field(default_factory=list)
    by_tenant: Counter[str] = field(default_factory=Counter)
    """Sealed objects per tenant (from well-formed tenant KEK ids, ``t/<tenant>/<n>``)."""
    shredded_tenants: set[str] | None = None
    """The tenants whose KEKs were shredded (``mark_shredded``); None: not looked up."""
    last_key: str | None = None
    elapsed: float = 0.0
    max_listed: int = 100
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, entry: ScanEntry) -> None:
        with self._lock:
            self.counts["objects"] += 1
            self.counts[entry.state.value] += 1
            self.stored_bytes[entry.state.value] += entry.size
            if entry.header is not None:
                group = (entry.header.kek_id, entry.header.version)
                self.by_kek.setdefault(group, KekSummary()).add(entry, entry.header.payload_size)
                tenant = tenant_of_kek_id(entry.header.kek_id)
                if tenant is not None:
                    self.by_tenant[tenant] += 1
            elif entry.state is State.PLAINTEXT and len(self.plaintext_keys) < self.max_listed:
                self.plaintext_keys.append(entry.key)
            elif entry.state in (State.FOREIGN, State.UNREADABLE) and (
                len(self.foreign) < self.max_listed
            ):
                self.foreign.append((entry.key, entry.reason))

    @property
    def plaintext_found(self) -> bool:
        return self.counts[State.PLAINTEXT.value] > 0

    def mark_shredded(self, is_shredded: Callable[[str], bool]) -> None:
        """Look up, once per tenant seen, whether its KEKs were shredded (the key store's
        tombstones): their objects are counted as *shredded*, apart from damaged ones."""
        self.shredded_tenants = {tenant for tenant in self.by_tenant if is_shredded(tenant)}

    @property
    def shredded(self) -> int:
        """Sealed objects whose tenant's KEKs were shredded."""
        return sum(self.by_tenant[tenant] for tenant in self.shredded_tenants or ())

    def to_dict(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "operation": self.operation,
            "objects": self.counts["objects"],
            **{state.value: self.counts[state.value] for state in State},
            "stored_bytes": {state.value: self.stored_bytes[state.value] for state in State},
            "sealed_by_kek": [
                {
                    "kek_id": kek_id,
                    "version": version,
                    "objects": summary.objects,
                    "stored_bytes": summary.stored_bytes,
                    "payload_bytes": summary.payload_bytes,
                    "oldest": when(summary.oldest),
                    "newest": when(summary.newest),
                }
                for (kek_id, version), summary in sorted(self.by_kek.items())
            ],
            "tenants": [
                {
                    "tenant": tenant,
                    "objects": objects,
                    "shredded": None
                    if self.shredded_tenants is None
                    else tenant in self.shredded_tenants,
                }
                for tenant, objects in sorted(self.by_tenant.items())
            ],
            "shredded": None if self.shredded_tenants is None else self.shredded,
            "plaintext_keys": self.plaintext_keys,
            "foreign_objects": [{"key": key, "reason": reason} for key, reason in self.foreign],
            "last_key": self.last_key,
            "elapsed_seconds": round(self.elapsed, 3),
        }


def read_head(store: S3Store, key: str, size: int) -> bytes | None:
    """The object's first bytes, its whole header if it is an envelope, read by ranged GETs:
    one of ``HEADER_PROBE`` bytes past the key's length, and one more for a longer header.
    ``None`` when the object is gone."""
    probe = min(size, HEADER_PROBE + len(key.encode("utf-8")))
    if probe == 0:
        return b""
    head = store.get_range(key, 0, probe - 1)
    if head is None or not is_envelope(head) or len(head) < PREAMBLE_SIZE:
        return head
    try:
        total = header_length(head)
    except EnvelopeError:
        return head
    if total > len(head) and total <= size:
        rest = store.get_range(key, len(head), total - 1)
        return None if rest is None else head + rest
    return head


def scan_object(store: S3Store, info: ObjectInfo, *, prefix: str = "") -> ScanEntry:
    if is_run_state(info.key, prefix):  # shown, never counted as a plaintext result
        reason = "a distributed run's state (docs/scale.md)"
        return ScanEntry(info.key, State.FOREIGN, info.size, info.last_modified, reason=reason)
    if is_key_store(info.key, prefix):  # wrapped tenant KEKs, never results (docs/tenants.md)
        reason = "the tenant key store (docs/tenants.md)"
        return ScanEntry(info.key, State.FOREIGN, info.size, info.last_modified, reason=reason)
    try:
        head = read_head(store, info.key, info.size)
    except ClientError as exc:  # one object S3 will not serve must not end the audit
        reason = describe_error(exc)
        return ScanEntry(info.key, State.UNREADABLE, info.size, info.last_modified, reason=reason)
    if head is None:  # deleted since it was listed
        return ScanEntry(info.key, State.FOREIGN, 0, info.last_modified, reason="deleted meanwhile")
    state, header, reason = classify(info.key, head)
    return ScanEntry(info.key, state, info.size, info.last_modified, header, reason)


def scan(
    store: S3Store,
    *,
    prefix: str = "",
    workers: int = DEFAULT_WORKERS,
    on_result: Callable[[ScanEntry], None] | None = None,
) -> ScanReport:
    """Classify every object under ``prefix`` from its header alone (no keyring)."""
    step = partial(scan_object, store, prefix=prefix)
    return Sweep(
        store,
        step,
        ScanReport(),
        prefix=prefix,
        workers=workers,
        on_result=on_result,
        skip_run_state=False,  # the audit lists every object
    ).run()


# -- verify ---------------------------------------------------------------------------------

VERIFY_OUTCOMES = (
    Outcome.VERIFIED,
    Outcome.SHREDDED,
    Outcome.PLAINTEXT,
    Outcome.FOREIGN,
    Outcome.FAILED,
)


def verify_object(
    store: S3Store, keyring: KeySource, pipeline: Pipeline, info: ObjectInfo
) -> ObjectResult:
    """Open the whole object with the keyring, bound to the key it was read from."""
    try:
        data = store.get(info.key)
    except (ClientError, EnvelopeError) as exc:  # EnvelopeError: too large to read
        return ObjectResult(info.key, Outcome.FAILED, reason=f"read failed: {describe_error(exc)}")
    if data is None:
        return ObjectResult(info.key, Outcome.CHANGED, reason="deleted meanwhile")
    if not is_envelope(data):  # an envelope that does not parse is a failure, not foreign
        state, _, reason = classify(info.key, data)
        outcome = Outcome.PLAINTEXT if state is State.PLAINTEXT else Outcome.FOREIGN
        return ObjectResult(info.key, outcome, reason=reason)
    kek_id: str | None = None
    try:
        kek_id = unpack(data, header_only=True).header.kek_id
        pipeline.unseal(data, keyring=keyring, key=info.key)
    except ShreddedKey:  # its tenant was shredded: unreadable by design, not damaged
        return ObjectResult(info.key, Outcome.SHREDDED, kek_id)
    except EnvelopeError as exc:
        return ObjectResult(info.key, Outcome.FAILED, kek_id, describe_error(exc))
    except ClientError as exc:  # a KMS refusal
        return ObjectResult(info.key, Outcome.FAILED, kek_id, describe_error(exc))
    return ObjectResult(info.key, Outcome.VERIFIED, kek_id)


def verify(
    store: S3Store,
    keyring: KeySource,
    *,
    prefix: str = "",
    workers: int = DEFAULT_WORKERS,
    pipeline: Pipeline | None = None,
    on_result: Callable[[ObjectResult], None] | None = None,
) -> SweepReport:
    """Open every object under ``prefix``; failures are counted by reason."""
    step = partial(verify_object, store, keyring, pipeline or Pipeline())
    report = SweepReport("verify", VERIFY_OUTCOMES)
    return Sweep(store, step, report, prefix=prefix, workers=workers, on_result=on_result).run()


def failure_classes(report: SweepReport) -> Counter[str]:
    """Failures counted by reason class (``IntegrityError``, ``UnknownKey``, S3 codes...)."""
    return Counter(reason.split(":", 1)[0] for _, reason in report.failures)
