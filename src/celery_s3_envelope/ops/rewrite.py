"""The conditional rewrite that ``rotate`` and ``migrate`` share: write over the exact version
read (If-Match on its ETag), keep what PutObject would reset, and say what a refusal means.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from ..errors import EnvelopeError
from ..store import NOT_HONOURED, Fetched, S3Store, is_missing_key, is_write_conflict
from .sweep import ObjectResult, Outcome, describe_error


def fetch_for_rewrite(store: S3Store, key: str) -> Fetched | ObjectResult:
    """The object in full with its ETag, or the result that ends its step: read failed, or
    deleted since it was listed."""
    try:
        got = store.fetch(key)
    except (ClientError, EnvelopeError) as exc:  # EnvelopeError: too large to read
        return ObjectResult(key, Outcome.FAILED, reason=f"read failed: {describe_error(exc)}")
    if got is None:
        return ObjectResult(key, Outcome.CHANGED, reason="deleted meanwhile")
    return got


def rewrite(store: S3Store, key: str, body: bytes, read: Fetched) -> None:
    """Write ``body`` over the exact version ``read`` (If-Match), keeping what PutObject would
    reset: the tag set (the expiry-class tag decides which lifecycle rule applies), server-side
    encryption and its KMS key, the storage class."""
    tags = store.get_tags(key) if read.tag_count else None
    store.put(key, body, if_match=read.etag, tags=tags, extra=read.put_args)


def refused_write(
    store: S3Store, key: str, read: Fetched, exc: ClientError, kek_id: str | None = None
) -> ObjectResult:
    """What a refused ``rewrite`` means: *changed* when someone else rewrote or deleted the
    object since it was read; *failed* otherwise, saying why, so that a server that ignores the
    condition never passes for a run where every object raced (one HeadObject, on refusal only)."""
    if is_write_conflict(exc) or is_missing_key(exc):
        try:
            unchanged = store.refused_unchanged(key, read.etag)
        except ClientError as head_exc:
            reason = f"write refused, then unreadable: {describe_error(head_exc)}"
            return ObjectResult(key, Outcome.FAILED, kek_id, reason=reason)
        if unchanged:
            return ObjectResult(key, Outcome.FAILED, kek_id, reason=NOT_HONOURED)
        return ObjectResult(key, Outcome.CHANGED, kek_id, reason="rewritten meanwhile")
    return ObjectResult(key, Outcome.FAILED, kek_id, reason=f"write failed: {describe_error(exc)}")
