"""S3 object I/O: one boto3 *client* per process, no envelope logic.

A client, never a resource: clients are thread-safe, resources are not. One per process: Celery's
prefork pool forks after the backend (and so perhaps its client) exists, and a client's connection
pool must never be shared between processes, so the client is re-created when ``os.getpid()``
changes. Storage errors are botocore's, unchanged, so Celery's retry logic can judge them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from .errors import SizeLimitExceeded, error_code

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

logger = logging.getLogger(__name__)

DELETE_BATCH_SIZE = 1000
"""DeleteObjects takes at most 1,000 keys a request."""
PROBE_DELETE_ATTEMPTS = 6

MISSING_KEY_CODES = frozenset({"NoSuchKey", "404"})
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
    }
)


NOT_HONOURED = (
    "the server refused If-Match on an unchanged object: it does not honour conditional writes "
    "here (Ceph RGW on a versioned bucket; docs/compatibility.md)"
)


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_missing_key(exc: ClientError) -> bool:
    return error_code(exc) in MISSING_KEY_CODES


def is_write_conflict(exc: ClientError) -> bool:
    """A conditional write lost a race: 412 (If-Match / If-None-Match failed), or 409 (AWS's
    ConditionalRequestConflict while another conditional write to the key is in flight)."""
    return error_code(exc) in CONFLICT_CODES or http_status(exc) in (409, 412)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection trouble, timeouts, 5xx and throttling."""
    if isinstance(
        exc,
        EndpointConnectionError | ConnectionClosedError | ConnectTimeoutError | ReadTimeoutError,
    ):
        return True
    if isinstance(exc, ClientError):
        return error_code(exc) in TRANSIENT_CODES or http_status(exc) >= 500
    return False


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object (what ListObjectsV2 says about it)."""

    key: str
    size: int
    etag: str
    last_modified: datetime


KEPT_ON_REWRITE = ("ServerSideEncryption", "SSEKMSKeyId", "BucketKeyEnabled", "StorageClass")
"""GetObject fields a rewrite passes back to PutObject, which would otherwise reset them."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One object read in full: what a conditional rewrite needs (ETag) and must keep (tags,
    server-side encryption, storage class)."""

    body: bytes
    etag: str
    tag_count: int
    put_args: dict[str, Any]
    last_modified: datetime | None = None
    """When the version read was written (the server's clock): what ``migrate`` judges by."""


_stores: weakref.WeakSet[S3Store] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent thread at fork time stays held for ever in the child.
    for store in list(_stores):
        store._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class S3Store:
    """The bucket's objects: get, conditional put, delete, batched delete, list, multi-get."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        put_extra_args: Mapping[str, Any] | None = None,
        max_pool_connections: int | None = None,
        mget_concurrency: int = 16,
        retries_mode: str = "standard",
        max_attempts: int | None = None,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        max_object_size: int | None = None,
        profile: str | None = None,
    ) -> None:
        """``max_object_size``: objects larger than this are refused unread (None: no bound)."""
        if not bucket:
            raise ValueError("a bucket name is required")
        if mget_concurrency < 1:
            raise ValueError("mget_concurrency must be at least 1")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self.profile = profile
        self.put_extra_args: dict[str, Any] = dict(put_extra_args or {})
        self.mget_concurrency = mget_concurrency
        self.max_object_size = max_object_size
        retries: dict[str, Any] = {"mode": retries_mode}
        if max_attempts is not None:  # attempts in all, the first included (AWS_MAX_ATTEMPTS)
            retries["total_max_attempts"] = max_attempts
        self.config = Config(
            retries=retries,  # type: ignore[arg-type]
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # One connection per concurrent get, so mget threads never wait for a socket.
            max_pool_connections=max_pool_connections or max(10, mget_concurrency),
        )
        self._lock = threading.Lock()
        self._current: tuple[int, S3Client] | None = None
        _stores.add(self)

    def __repr__(self) -> str:  # no credentials
        return f"S3Store(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    # -- the client -------------------------------------------------------------------------
    def _session(self) -> boto3.session.Session:
        # A session per client: boto3's default session is not thread-safe.
        return boto3.session.Session(
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            region_name=self.region,
            profile_name=self.profile,
        )

    def has_credentials(self) -> bool:
        """Whether credentials are configured or found by boto3's usual chain."""
        return self._session().get_credentials() is not None

    @property
    def client(self) -> S3Client:
        """This process's client: created on first use, and again after a fork."""
        pid = os.getpid()
        current = self._current  # one read: (pid, client) always belong together
        if current is not None and current[0] == pid:
            return current[1]
        with self._lock:
            current = self._current
            if current is None or current[0] != pid:
                client = self._session().client(
                    "s3", endpoint_url=self.endpoint_url, config=self.config
                )
                current = self._current = (pid, client)
            return current[1]

    # -- single objects ---------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """The object's body from ONE GetObject; ``None`` when the key does not exist."""
        found = self.get_with_etag(key)
        return None if found is None else found[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """Body and ETag from one GetObject (for a later ``put(if_match=etag)``)."""
        fetched = self.fetch(key)
        return None if fetched is None else (fetched.body, fetched.etag)

    def fetch(self, key: str) -> Fetched | None:
        """Body, ETag and tag count from one GetObject; ``None`` when the key does not exist.

        An object larger than ``max_object_size`` raises ``SizeLimitExceeded`` before its body
        is read (its ContentLength; a body longer than announced is cut off at the limit)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing_key(exc):
                return None
            raise
        body = response["Body"]
        try:
            limit = self.max_object_size
            if limit is not None and int(response.get("ContentLength") or 0) > limit:
                raise self._too_large(key, int(response["ContentLength"]))
            data = body.read() if limit is None else body.read(limit + 1)
            if limit is not None and len(data) > limit:
                raise self._too_large(key, len(data))
            kept = {name: response[name] for name in KEPT_ON_REWRITE if response.get(name)}  # type: ignore[literal-required]
            if kept.get("StorageClass") == "STANDARD":
                del kept["StorageClass"]
            return Fetched(
                data,
                response["ETag"],
                int(response.get("TagCount") or 0),
                kept,
                response.get("LastModified"),
            )
        finally:
            body.close()

    def _too_large(self, key: str, size: int) -> SizeLimitExceeded:
        return SizeLimitExceeded(
            f"object {key!r} is {size} bytes, more than the {self.max_object_size} an envelope "
            "within envelope_max_size can take: refused unread"
        )

    def etag(self, key: str) -> str | None:
        """The object's current ETag from one HeadObject; ``None`` when the key does not exist."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing_key(exc) or http_status(exc) == 404:
                return None
            raise
        return str(response["ETag"])

    def refused_unchanged(self, key: str, etag: str) -> bool:
        """After a conditional write on ``etag`` was refused (412): True when the object still
        has that ETag, i.e. the condition held and the server does not honour If-Match here
        (Ceph RGW 16 on a versioned bucket checks it against the version being written;
        docs/compatibility.md). False when it changed or is gone: a race really was lost."""
        current = self.etag(key)
        return current is not None and current.strip('"') == etag.strip('"')

    def honours_create_only(self, key: str) -> bool:
        """Whether this bucket honours ``If-None-Match: *``: ``key`` (a fresh name) written
        create-only twice, the second refused (412) when honoured; then deleted, with every
        version the probe made where the bucket keeps versions. Ceph RGW 16 on a versioned
        bucket lets both writes through (docs/compatibility.md). 3 requests (5 on a versioned
        bucket). A refusal of the *first* write can only meet an earlier attempt of that same
        write (a response lost, botocore's retry refused): the condition was honoured."""
        made: list[str | None] = []
        try:
            for _ in range(2):
                try:
                    made.append(self._put_probe(key))
                except ClientError as exc:
                    if is_write_conflict(exc):
                        return True
                    raise
            return False
        finally:
            self._delete_probe(key, made)

    def _put_probe(self, key: str) -> str | None:
        response = self.client.put_object(
            **{**self.put_extra_args, "Bucket": self.bucket, "Key": key},
            Body=b"",
            IfNoneMatch="*",
        )
        return response.get("VersionId")

    def _delete_probe(self, key: str, versions: list[str | None]) -> None:
        """Delete the probe (each version it made, where versions are kept); transient errors
        are tried again, up to ``PROBE_DELETE_ATTEMPTS`` times, so that no empty object is left
        in the bucket; one that is left is logged."""
        kept = [v for v in versions if v and v != "null"]
        targets: list[dict[str, str]] = [{"VersionId": v} for v in kept] or [{}]
        for target in targets:
            for attempt in range(PROBE_DELETE_ATTEMPTS):
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=key, **target)  # type: ignore[arg-type]
                    break
                except (ClientError, BotoCoreError) as exc:
                    if attempt + 1 < PROBE_DELETE_ATTEMPTS and is_transient(exc):
                        time.sleep(0.05 * 2**attempt)
                        continue
                    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
                    logger.warning(
                        "could not delete the probe s3://%s/%s: %s", self.bucket, key, code
                    )
                    return

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules as S3 returns them (``[]`` when it has none)."""
        try:
            response = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise
        return list(response.get("Rules", []))  # type: ignore[arg-type]

    def put_lifecycle_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace the bucket's whole lifecycle configuration with ``rules``."""
        if rules:
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": rules},  # type: ignore[typeddict-item]
            )
        else:
            self.client.delete_bucket_lifecycle(Bucket=self.bucket)

    def get_tags(self, key: str) -> dict[str, str]:
        """The object's tag set (one GetObjectTagging)."""
        response = self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in response.get("TagSet", ())}

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``start`` to ``end`` inclusive (HTTP Range semantics) of the object."""
        if start < 0 or end < start:
            raise ValueError("need 0 <= start <= end")
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}"
            )
        except ClientError as exc:
            if is_missing_key(exc):
                return None
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        tags: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Write the object and return its ETag.

        ``if_match`` writes only over that ETag, ``if_none_match`` only when the key is absent;
        a failed precondition raises botocore's ``ClientError`` (PreconditionFailed, 412).
        ``tags`` are sent as the object's tag set in the same request; ``extra`` adds PutObject
        arguments over the store's own (e.g. a rewritten object's own encryption settings).
        """
        if if_match is not None and if_none_match:
            raise ValueError("if_match and if_none_match exclude each other")
        kwargs: dict[str, Any] = {
            **self.put_extra_args,
            **(extra or {}),
            "Bucket": self.bucket,
            "Key": key,
        }
        if if_match is not None:
            # Unquoted: Ceph RGW 16 never matches a quoted ETag in If-Match on PUT (412 for the
            # exact version); AWS and moto accept either form (docs/compatibility.md).
            kwargs["IfMatch"] = if_match.strip('"')
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if tags:
            kwargs["Tagging"] = urlencode(dict(tags))
        response = self.client.put_object(Body=body, **kwargs)
        return response["ETag"]

    def delete(self, key: str) -> None:
        """Delete the object (deleting an absent key is not an error in S3)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    # -- many objects -----------------------------------------------------------------------
    def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` with DeleteObjects, 1,000 a request; returns how many were deleted.

        Keys the server refuses to delete are logged (key and error code) and not counted.
        """
        deleted = 0
        batch: list[dict[str, str]] = []
        for key in keys:
            batch.append({"Key": key})
            if len(batch) == DELETE_BATCH_SIZE:
                deleted += self._delete_batch(batch)
                batch = []
        if batch:
            deleted += self._delete_batch(batch)
        return deleted

    def _delete_batch(self, targets: list[dict[str, str]]) -> int:
        """One DeleteObjects of ``targets`` (``Key``, and ``VersionId`` for a version); how many
        were deleted. Each refusal is logged with its key, version and code."""
        response = self.client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": targets, "Quiet": True},  # type: ignore[typeddict-item]
        )
        errors = response.get("Errors", [])
        for error in errors:
            version = error.get("VersionId")
            logger.warning(  # the key and code as the server sent them: escaped (repr)
                "could not delete %r%s from s3://%s: %r",
                error.get("Key"),
                f" (version {version!r})" if version else "",
                self.bucket,
                error.get("Code"),
            )
        return len(targets) - len(errors)

    def holds_versions(self, prefix: str) -> bool:
        """Whether any version or delete marker is stored under ``prefix`` (one request)."""
        page = self.client.list_object_versions(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("Versions") or page.get("DeleteMarkers"))

    def destroy_versions(self, prefix: str, *, keep: str | None = None) -> tuple[int, int]:
        """Delete every object under ``prefix`` but ``keep``, and on a versioned bucket every
        stored version of each (noncurrent versions and delete markers too), so nothing under
        it can be restored; returns how many objects or versions were deleted, and how many the
        server refused (Object Lock, a policy), each logged with its key and code. A bucket that
        never had versioning answers ListObjectVersions with each object once (version
        ``null``)."""
        targets: list[dict[str, str]] = []
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]:
                if item["Key"] == keep:
                    continue
                target = {"Key": item["Key"]}
                version = item.get("VersionId")
                if version:  # "null" too: without it, versioning on adds a marker over it
                    target["VersionId"] = version
                targets.append(target)
        deleted = 0
        for start in range(0, len(targets), DELETE_BATCH_SIZE):
            deleted += self._delete_batch(targets[start : start + DELETE_BATCH_SIZE])
        return deleted, len(targets) - deleted

    def list(
        self, prefix: str = "", *, start_after: str | None = None, page_size: int | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` in key order, holding one listing page at a time."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        if page_size is not None:
            kwargs["PaginationConfig"] = {"PageSize": page_size}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(**kwargs):
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    key=item["Key"],
                    size=item["Size"],
                    etag=item["ETag"],
                    last_modified=item["LastModified"],
                )

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """``get`` for each key, ``mget_concurrency`` at a time; the first error propagates."""
        unique = list(dict.fromkeys(keys))
        if len(unique) <= 1:
            return {key: self.get(key) for key in unique}
        _ = self.client  # create it once here, rather than racing in every worker thread
        workers = min(self.mget_concurrency, len(unique))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-get-many") as pool:
            return dict(zip(unique, pool.map(self.get, unique), strict=True))
