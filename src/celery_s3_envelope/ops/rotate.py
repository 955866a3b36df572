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

from collections.abc import Callable
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from ..envelope import is_envelope, unpack
from ..errors import EnvelopeError
from ..keyring import KeySource
from ..pipeline import Pipeline, rewrap
from ..store import ObjectInfo, S3Store
from .rewrite import fetch_for_rewrite, refused_write, rewrite
from .sweep import ObjectResult, Outcome, Sweep, SweepReport, describe_error

ROTATE_OUTCOMES = (
    Outcome.REWRAPPED,
    Outcome.CURRENT,
    Outcome.CHANGED,
    Outcome.PLAINTEXT,
    Outcome.SKIPPED,
    Outcome.FAILED,
)


def not_a_tenant_kek(kek_id: str) -> bool:
    """What a rotation of the keyring's KEKs rewraps: never a tenant's result, which would
    move it out of its tenant's key (and out of reach of ``shred --tenant``)."""
    from ..keyring import TENANT_KEK_PREFIX

    return not kek_id.startswith(TENANT_KEK_PREFIX)


def rotate_object(
    store: S3Store,
    keyring: KeySource,
    info: ObjectInfo,
    *,
    dry_run: bool = False,
    reencrypt: bool = False,
    verify: bool = False,
    pipeline: Pipeline | None = None,
    select: Callable[[str], bool] = not_a_tenant_kek,
) -> ObjectResult:
    """Bring one object under the active KEK with a conditional write; never raises for S3 or
    envelope errors (they become the result), so one bad object does not stop a run."""
    key = info.key
    got = fetch_for_rewrite(store, key)
    if isinstance(got, ObjectResult):
        return got
    data = got.body
    if not is_envelope(data):
        return ObjectResult(key, Outcome.PLAINTEXT)
    try:
        kek_id = unpack(data).header.kek_id
        if not select(kek_id):
            return ObjectResult(key, Outcome.SKIPPED, kek_id)
        if kek_id == keyring.active.id and not reencrypt:
            return ObjectResult(key, Outcome.CURRENT, kek_id)
        codec = pipeline or Pipeline()
        if reencrypt:
            new = codec.seal(codec.unseal(data, keyring=keyring, key=key), key=key, keyring=keyring)
        else:
            new = rewrap(data, keyring=keyring, key=key, max_size=codec.max_size)
    except (EnvelopeError, ClientError) as exc:  # ClientError: KMS refused or throttled
        return ObjectResult(key, Outcome.FAILED, reason=describe_error(exc))
    if dry_run:
        return ObjectResult(key, Outcome.REWRAPPED, kek_id)
    try:
        rewrite(store, key, new, got)
    except ClientError as exc:
        return refused_write(store, key, got, exc, kek_id)
    if verify:
        return _verified(store, keyring, key, kek_id, pipeline or Pipeline())
    return ObjectResult(key, Outcome.REWRAPPED, kek_id)


def _verified(
    store: S3Store, keyring: KeySource, key: str, kek_id: str, pipeline: Pipeline
) -> ObjectResult:
    try:
        data = store.get(key)
        if data is not None:  # deleted since: nothing left to verify
            pipeline.unseal(data, keyring=keyring, key=key)
    except (ClientError, EnvelopeError) as exc:
        reason = f"verify failed: {describe_error(exc)}"
        return ObjectResult(key, Outcome.FAILED, kek_id, reason=reason)
    return ObjectResult(key, Outcome.REWRAPPED, kek_id)


class Rotation(Sweep[ObjectResult, SweepReport]):
    """A rotation run over a prefix; ``sweep_options`` are ``Sweep``'s (prefix, workers, limit,
    resume_from, on_result)."""

    def __init__(
        self,
        store: S3Store,
        keyring: KeySource,
        *,
        dry_run: bool = False,
        reencrypt: bool = False,
        verify: bool = False,
        pipeline: Pipeline | None = None,
        select: Callable[[str], bool] = not_a_tenant_kek,
        **sweep_options: Any,
    ) -> None:
        step = partial(
            rotate_object,
            store,
            keyring,
            dry_run=dry_run,
            reencrypt=reencrypt,
            verify=verify,
            pipeline=pipeline or Pipeline(),
            select=select,
        )
        report = SweepReport(
            "rotate", ROTATE_OUTCOMES, target_kek=keyring.active.id, dry_run=dry_run
        )
        super().__init__(store, step, report, **sweep_options)
