"""The tests' S3: where it is (``S3Endpoint``), fresh buckets, the requests a client sends, and S3
error replies made up without reaching the server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from celery_s3_envelope.store import S3Store

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


@dataclass
class Requests:
    """HTTP requests seen by one client (botocore's ``before-send``: retries count too)."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # names in lower case

    def __len__(self) -> int:
        return len(self.sent)

    @property
    def methods(self) -> list[str]:
        return [method for method, _ in self.sent]

    @property
    def conditional(self) -> list[str]:
        """Each request as its method and its write condition: ``PUT If-None-Match``,
        ``PUT If-Match``, ``PUT``, ``GET``..."""
        found = []
        for (method, _), headers in zip(self.sent, self.headers, strict=True):
            condition = [n for n in ("If-None-Match", "If-Match") if n.lower() in headers]
            found.append(" ".join([method, *condition]))
        return found


@contextmanager
def count_requests(client: Any) -> Iterator[Requests]:
    """Record every HTTP request ``client`` sends inside the block."""
    seen = Requests()

    def record(request: Any, **_: Any) -> None:  # returning None lets the request go out
        seen.sent.append((request.method, request.url))
        seen.headers.append({str(k).lower(): str(v) for k, v in request.headers.items()})

    client.meta.events.register("before-send.s3", record)
    try:
        yield seen
    finally:
        client.meta.events.unregister("before-send.s3", record)


DUMMY_ACCESS_KEY_ID = "testing-access-key-id"
DUMMY_SECRET_ACCESS_KEY = "testing-secret-access-key"
"""Dummies for moto, which accepts any credentials (SeaweedFS knows its own: ``seaweedfs``)."""
MOTO_SSE_KMS_KEY_ID = "arn:aws:kms:us-east-1:000000000000:key/11111111-2222-3333-4444-555555555555"
"""moto accepts any SSE-KMS key id."""


@dataclass(frozen=True)
class S3Endpoint:
    """Where the tests' S3 is, and how to reach it."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    server: str
    """``seaweedfs``, ``moto``, or what ``S3_TEST_SERVER_NAME`` says of an external server
    (``ceph-rgw`` from `make test-rgw`; ``external`` when unsaid)."""
    sse_kms_key_id: str | None = None
    """A key id the server accepts for SSE-KMS (``S3_TEST_SSE_KMS_KEY_ID`` for an external one:
    Ceph RGW's test KMS knows only the keys it was given; SeaweedFS's local KMS, its default
    key's alias); ``None``: the server has no SSE-KMS."""

    def client(self) -> S3Client:
        """A plain client for test set-up and inspection (not the code under test)."""
        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )
        return session.client(
            "s3", endpoint_url=self.endpoint_url, config=Config(retries={"mode": "standard"})
        )

    def settings(self, bucket: str) -> dict[str, Any]:
        """The stock ``s3_*`` Celery settings for ``bucket``."""
        return {
            "s3_bucket": bucket,
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }

    def store(self, bucket: str, **kwargs: Any) -> S3Store:
        return S3Store(
            bucket,
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            **kwargs,
        )


def empty_bucket(client: S3Client, bucket: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@contextmanager
def fresh_bucket(client: S3Client, *, versioned: bool = False) -> Iterator[str]:
    """A new, empty bucket (versioning enabled when asked), deleted with every object and version
    afterwards."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    try:
        yield name
    finally:
        while versioned:  # the first page again each time: deleting shifts the pages
            page = client.list_object_versions(Bucket=name)
            items = [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]
            if not items:
                break
            objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in items]
            client.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True})
        empty_bucket(client, name)
        client.delete_bucket(Bucket=name)


class RawBody:
    """A response body as botocore reads it (``stream``), for replies made up in ``before-send``."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def error_response(request: Any, status: int, code: str, message: str) -> AWSResponse:
    """The S3 error reply ``status`` / ``code`` to ``request``, as if the server had sent it (a
    ``before-send`` handler returns it instead of sending the request)."""
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>{message}</Message></Error>"
    ).encode()
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, RawBody(body))


@contextmanager
def server_answers(client: Any, operation: str, status: int, code: str) -> Iterator[None]:
    """Inside the block, ``operation`` gets an S3 error reply without reaching the server (for
    replies moto cannot be made to give, such as 403 AccessDenied)."""

    def answer(request: Any, **_: Any) -> AWSResponse:
        return error_response(request, status, code, f"{code} (simulated)")

    event = f"before-send.s3.{operation}"
    client.meta.events.register_first(event, answer)
    try:
        yield
    finally:
        client.meta.events.unregister(event, answer)


def missing_bucket_name() -> str:
    """A bucket name nobody has created (unique, so safe on a shared real server too)."""
    return f"missing-{uuid.uuid4().hex[:24]}"
