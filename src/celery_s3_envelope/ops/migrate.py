"""``migrate``: seal, in place, the plaintext results the stock Celery S3 backend left.

Each Celery result key is read with its ETag, classified like ``scan`` does, sealed under the
active KEK and written back with If-Match (``rewrite``): a result a live worker stored meanwhile
is kept. Only plaintext written before the cutoff (the moment the deployment switched) is sealed;
newer plaintext is reported *suspicious*. Anything that is not a Celery result key is counted
*foreign* and never read.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from ..errors import EnvelopeError
from ..keyring import Keyring
from ..pipeline import Pipeline
from ..store import ObjectInfo, S3Store
from .celery_keys import is_celery_result_key
from .rewrite import fetch_for_rewrite, refused_write, rewrite
from .scan import State, classify
from .sweep import ObjectResult, Outcome, Sweep, SweepReport, describe_error

NOT_A_RESULT_KEY = "not a Celery result key: left as it is"

MIGRATE_OUTCOMES = (
    Outcome.SEALED,
    Outcome.CURRENT,
    Outcome.CHANGED,
    Outcome.FOREIGN,
    Outcome.SUSPICIOUS,
    Outcome.FAILED,
)


def migrate_object(
    store: S3Store,
    keyring: Keyring,
    pipeline: Pipeline,
    info: ObjectInfo,
    *,
    cutoff: datetime,
    dry_run: bool = False,
) -> ObjectResult:
    """Seal one plaintext Celery result in place under the active KEK, with ``If-Match`` on its
    ETag, when it was written before ``cutoff``.

    ``cutoff`` is the moment the deployment switched: the last worker with Celery's own S3
    backend stopped writing. Plaintext written at or after it cannot be a result of the stock
    backend; it is what a bucket writer would plant for ``migrate`` to seal (a forgery, or a
    sealed result replaced by plaintext), so it is reported *suspicious* and left as it is.
    The time judged is the server's LastModified of the very version read and then overwritten
    (If-Match on its ETag), so a write between listing and reading cannot slip through.

    Only keys Celery writes results under are considered: anything else under the prefix (a
    README, a JSON config, another application's files) is counted *foreign* without being
    read, even when it is text that ``scan`` reports as plaintext. The value is sealed as text
    when it is UTF-8 (what the stock backend returns for text serializers), else as bytes; the
    backend returns either as the app's serializer expects.
    """
    key = info.key
    if not is_celery_result_key(key):
        return ObjectResult(key, Outcome.FOREIGN, reason=NOT_A_RESULT_KEY)
    got = fetch_for_rewrite(store, key)
    if isinstance(got, ObjectResult):
        return got
    data = got.body
    state, header, reason = classify(key, data)
    if state is State.SEALED:
        return ObjectResult(key, Outcome.CURRENT, header.kek_id if header else None)
    if state is State.FOREIGN:
        return ObjectResult(key, Outcome.FOREIGN, reason=reason)
    written = got.last_modified or info.last_modified
    if written >= cutoff.replace(microsecond=0):  # LastModified has whole seconds: same second
        reason = (
            f"plaintext written {written.isoformat()}, after the cutoff {cutoff.isoformat()}: "
            "not sealed (docs/migration.md)"
        )
        return ObjectResult(key, Outcome.SUSPICIOUS, reason=reason)
    if "-" in got.etag:  # multipart: its LastModified may be when the upload began
        reason = "plaintext uploaded in parts, which the stock backend never does: not sealed"
        return ObjectResult(key, Outcome.SUSPICIOUS, reason=reason)
    value: str | bytes
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        value = data
    try:
        sealed = pipeline.seal(value, key=key, keyring=keyring)
    except EnvelopeError as exc:
        return ObjectResult(key, Outcome.FAILED, reason=describe_error(exc))
    if dry_run:
        return ObjectResult(key, Outcome.SEALED, keyring.active.id)
    try:
        rewrite(store, key, sealed, got)
    except ClientError as exc:
        return refused_write(store, key, got, exc)
    return ObjectResult(key, Outcome.SEALED, keyring.active.id)


class Migration(Sweep[ObjectResult, SweepReport]):
    """Seal every plaintext Celery result under a prefix; ``sweep_options`` are ``Sweep``'s."""

    def __init__(
        self,
        store: S3Store,
        keyring: Keyring,
        *,
        cutoff: datetime,
        dry_run: bool = False,
        pipeline: Pipeline | None = None,
        **sweep_options: Any,
    ) -> None:
        if cutoff.tzinfo is None:
            raise ValueError("the cutoff needs a time zone")
        codec = pipeline or Pipeline()
        step = partial(migrate_object, store, keyring, codec, cutoff=cutoff, dry_run=dry_run)
        report = SweepReport("migrate", MIGRATE_OUTCOMES, keyring.active.id, dry_run=dry_run)
        super().__init__(store, step, report, **sweep_options)
