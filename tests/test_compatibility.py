"""Probes of the S3 behaviours the code relies on, one test each, run on whichever server the suite
runs against (SeaweedFS in `make test`, Ceph RGW in `make test-rgw`, moto with
``S3_TEST_SERVER=moto``): docs/compatibility.md's table is what they saw. Where servers differ,
the expected answer is named per server (``S3Endpoint.server``); an unknown server must give one
of the answers the code handles.

Conditional writes are what chords, rotation and ``store_result`` rest on, and S3 makes each one
atomic: of many writers on one condition, exactly one wins. Every body a racing writer sends
differs from the object's (equal bodies have equal ETags, and a writer repeating the current body
would pass the If-Match of the next one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from support.s3 import S3Endpoint, fresh_bucket

RACES = 10
WRITERS = 12


def code(call: Callable[[], Any]) -> str:
    """``ok``, or the S3 error code (the HTTP status where the body has none) the call got."""
    try:
        call()
    except ClientError as exc:
        error = exc.response.get("Error", {}).get("Code")
        return str(error or exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return "ok"


@pytest.fixture
def client(s3_endpoint: S3Endpoint) -> Any:
    return s3_endpoint.client()


@pytest.fixture
def versioned(client: Any) -> Iterator[str]:
    with fresh_bucket(client, versioned=True) as name:
        yield name


def test_create_only_write_is_refused_over_an_existing_key(client: Any, bucket: str) -> None:
    assert (
        code(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")) == "ok"
    )
    assert (
        code(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*"))
        == "PreconditionFailed"
    )
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"


def test_if_match_writes_over_the_current_etag_only(
    client: Any, bucket: str, s3_endpoint: S3Endpoint
) -> None:
    first = client.put_object(Bucket=bucket, Key="k", Body=b"1")["ETag"]
    assert client.head_object(Bucket=bucket, Key="k")["ETag"] == first  # PUT's ETag is GET's
    # The code sends it unquoted (S3Store.put): every server matches that.
    unquoted = first.strip('"')
    assert (
        code(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"2", IfMatch=unquoted)) == "ok"
    )
    stale = code(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"3", IfMatch=first))
    assert stale == "PreconditionFailed"
    absent = code(lambda: client.put_object(Bucket=bucket, Key="gone", Body=b"", IfMatch=first))
    expected_absent = {"moto": {"NoSuchKey"}, "seaweedfs": {"PreconditionFailed"}}
    assert absent in expected_absent.get(s3_endpoint.server, {"NoSuchKey", "PreconditionFailed"})
    current = client.head_object(Bucket=bucket, Key="k")["ETag"]
    quoted = code(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"4", IfMatch=current))
    # Ceph RGW 16 compares the header byte-wise with the unquoted stored ETag.
    expected_quoted = {"moto": "ok", "seaweedfs": "ok", "ceph-rgw": "PreconditionFailed"}
    if s3_endpoint.server in expected_quoted:
        assert quoted == expected_quoted[s3_endpoint.server]


def test_conditional_writes_on_a_versioned_bucket(
    client: Any, versioned: str, s3_endpoint: S3Endpoint
) -> None:
    """Honoured as on an unversioned bucket by AWS, moto and SeaweedFS; ignored by Ceph RGW 16,
    which the code detects (``S3Store.honours_create_only``, ``S3Store.refused_unchanged``)."""
    client.put_object(Bucket=versioned, Key="k", Body=b"1")
    again = code(lambda: client.put_object(Bucket=versioned, Key="k", Body=b"2", IfNoneMatch="*"))
    over = code(lambda: client.put_object(
        Bucket=versioned, Key="k", Body=b"3",
        IfMatch=client.head_object(Bucket=versioned, Key="k")["ETag"].strip('"'),
    ))  # fmt: skip
    seen = {"If-None-Match over an existing key": again, "If-Match on the current ETag": over}
    honoured = {"If-None-Match over an existing key": "PreconditionFailed",
                "If-Match on the current ETag": "ok"}  # fmt: skip
    ignored = {"If-None-Match over an existing key": "ok",
               "If-Match on the current ETag": "PreconditionFailed"}  # fmt: skip
    expected = {"moto": honoured, "seaweedfs": honoured, "ceph-rgw": ignored}
    if s3_endpoint.server in expected:
        assert seen == expected[s3_endpoint.server]
    else:
        assert seen in (honoured, ignored)


def race(client: Any, bucket: str, condition: str) -> list[int]:
    """``RACES`` times, ``WRITERS`` threads each held until all are ready, then one conditional
    PutObject each on one key: the number of writers that succeeded, race by race."""
    winners = []
    for round_ in range(RACES):
        key = f"{condition}-{round_}"
        kwargs: dict[str, str] = {"IfNoneMatch": "*"}
        if condition == "If-Match":
            etag = client.put_object(Bucket=bucket, Key=key, Body=b"before")["ETag"]
            kwargs = {"IfMatch": etag.strip('"')}
        start = threading.Barrier(WRITERS, timeout=30)
        won: list[bool] = []

        def write(
            i: int,
            key: str = key,
            kwargs: dict[str, str] = kwargs,
            start: threading.Barrier = start,
            won: list[bool] = won,
        ) -> None:
            start.wait()
            body = b"%d" % i
            outcome = code(lambda: client.put_object(Bucket=bucket, Key=key, Body=body, **kwargs))
            won.append(outcome == "ok")

        threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        winners.append(sum(won))
    return winners


@pytest.mark.parametrize("condition", ["If-None-Match", "If-Match"])
def test_of_many_conditional_writers_exactly_one_wins(
    s3_endpoint: S3Endpoint, bucket: str, condition: str
) -> None:
    winners = race(_wide_client(s3_endpoint), bucket, condition)
    assert winners == [1] * RACES


def _wide_client(s3_endpoint: S3Endpoint) -> Any:
    """A client with a connection for each writer (botocore's pool holds 10 by default)."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=s3_endpoint.access_key_id,
        aws_secret_access_key=s3_endpoint.secret_access_key,
        region_name=s3_endpoint.region,
    ).client(
        "s3",
        endpoint_url=s3_endpoint.endpoint_url,
        config=Config(retries={"mode": "standard"}, max_pool_connections=WRITERS),
    )


def test_errors_the_store_judges_by_code(client: Any, bucket: str, s3_endpoint: S3Endpoint) -> None:
    """An absent key is 404 NoSuchKey on GET (``S3Store.get``: ``None``) and a bare 404 on
    HEAD; a missing bucket is NoSuchBucket (SeaweedFS answers 403 AccessDenied instead to an
    anonymous request, or when it may create buckets on upload: `weed mini` here runs with one
    identity and ``-s3.autoCreateBucket=false``)."""
    assert code(lambda: client.get_object(Bucket=bucket, Key="absent")) == "NoSuchKey"
    assert code(lambda: client.head_object(Bucket=bucket, Key="absent")) == "404"
    missing = f"{bucket}-missing"
    assert code(lambda: client.put_object(Bucket=missing, Key="k", Body=b"")) == "NoSuchBucket"
    assert code(lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket)) == (
        "NoSuchLifecycleConfiguration"
    )


def test_ranged_reads(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="ten", Body=b"0123456789")
    clipped = client.get_object(Bucket=bucket, Key="ten", Range="bytes=5-100")
    assert (clipped["Body"].read(), clipped["ContentRange"]) == (b"56789", "bytes 5-9/10")
    past = code(lambda: client.get_object(Bucket=bucket, Key="ten", Range="bytes=10-20"))
    assert past == "InvalidRange"
    client.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert code(lambda: client.get_object(Bucket=bucket, Key="empty", Range="bytes=0-10")) == (
        "InvalidRange"
    )


def test_quiet_delete_lists_only_errors(client: Any, bucket: str, s3_endpoint: S3Endpoint) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"")
    answer = client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "k"}, {"Key": "absent"}], "Quiet": True}
    )
    assert answer.get("Errors", []) == []
    if s3_endpoint.server != "moto":  # moto lists every key as Deleted, Quiet or not
        assert answer.get("Deleted", []) == []
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)


def test_tags_go_with_a_conditional_put(client: Any, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="k", Body=b"", IfNoneMatch="*", Tagging="b=2&a=1")
    tags = client.get_object_tagging(Bucket=bucket, Key="k")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"a": "1", "b": "2"}
    assert client.get_object(Bucket=bucket, Key="k")["TagCount"] == 2
