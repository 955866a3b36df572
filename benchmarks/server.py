"""The S3 (and KMS) servers the benchmarks talk to.

* ``moto``: moto's server in its own process on 127.0.0.1 (so its request handling does not share
  our process's interpreter lock); KMS too;
* ``seaweedfs``: a throwaway SeaweedFS (``celery_s3_envelope.cli.seaweedfs``, as in `make test`);
* ``ceph-rgw``: a throwaway Ceph RGW from ``scripts/ceph-rgw.sh`` where Debian's Ceph packages are
  installed (`make test-rgw` installs them as root); never installed here;
* ``external``: the server named by ``S3_TEST_ENDPOINT_URL`` / ``S3_TEST_ACCESS_KEY_ID`` /
  ``S3_TEST_SECRET_ACCESS_KEY`` (``S3_TEST_SERVER_NAME`` names it), when set.

``available()`` lists those this machine can run, in that order; the backend and rotation sections
run on each.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from celery_s3_envelope.store import S3Store


@dataclass(frozen=True)
class Endpoint:
    url: str
    access_key_id: str
    secret_access_key: str
    region: str
    name: str

    def client(self, service: str = "s3") -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def store(self, bucket: str) -> S3Store:
        """The project's store on ``bucket`` of this server."""
        return S3Store(
            bucket,
            endpoint_url=self.url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )

    def settings(self, bucket: str) -> dict[str, str]:
        return {
            "s3_bucket": bucket,
            "s3_endpoint_url": self.url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_process() -> Iterator[Endpoint]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = Endpoint(f"http://127.0.0.1:{port}", "bench", "bench", "us-east-1", "moto (process)")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                endpoint.client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def seaweedfs_process() -> Iterator[Endpoint]:
    from celery_s3_envelope.cli import seaweedfs

    with seaweedfs.running() as url:
        yield Endpoint(
            url, seaweedfs.ACCESS_KEY_ID, seaweedfs.SECRET_ACCESS_KEY, "us-east-1", "SeaweedFS 4.48"
        )


RGW_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ceph-rgw.sh"
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")


@contextmanager
def rgw_process() -> Iterator[Endpoint]:
    """A throwaway Ceph RGW (scripts/ceph-rgw.sh up), stopped and its directory removed after."""
    parent = Path(tempfile.mkdtemp(prefix="bench-rgw-"))
    folder = parent / "rgw"
    try:
        subprocess.run(
            [str(RGW_SCRIPT), "up", str(folder)],
            check=True,
            env={**os.environ, "CEPH_RGW_NO_INSTALL": "1"},
            stdout=subprocess.DEVNULL,
        )
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (folder / "env").read_text().splitlines()
        )
        yield Endpoint(
            env["S3_TEST_ENDPOINT_URL"],
            env["S3_TEST_ACCESS_KEY_ID"],
            env["S3_TEST_SECRET_ACCESS_KEY"],
            env["S3_TEST_REGION"],
            "Ceph RGW 16.2",
        )
    finally:
        subprocess.run([str(RGW_SCRIPT), "down", str(folder)], check=False)
        shutil.rmtree(parent, ignore_errors=True)


@contextmanager
def external() -> Iterator[Endpoint]:
    url = os.environ["S3_TEST_ENDPOINT_URL"]
    yield Endpoint(
        url,
        os.environ["S3_TEST_ACCESS_KEY_ID"],
        os.environ["S3_TEST_SECRET_ACCESS_KEY"],
        os.environ.get("S3_TEST_REGION", "us-east-1"),
        f"{os.environ.get('S3_TEST_SERVER_NAME', 'external')} ({url})",
    )


SERVERS = {
    "moto": moto_process,
    "seaweedfs": seaweedfs_process,
    "ceph-rgw": rgw_process,
    "external": external,
}


def available() -> list[str]:
    """The servers this machine can run: moto and SeaweedFS always; Ceph RGW where its
    packages are installed; the external one when ``S3_TEST_ENDPOINT_URL`` names it."""
    found = ["moto", "seaweedfs"]
    if all(shutil.which(name) for name in CEPH_BINARIES):
        found.append("ceph-rgw")
    if os.environ.get("S3_TEST_ENDPOINT_URL"):
        found.append("external")
    return found


def s3_endpoint(server: str = "moto") -> Any:
    """A context manager: ``server``'s endpoint for the block (started and stopped with it)."""
    return SERVERS[server]()


@contextmanager
def fresh_bucket(endpoint: Endpoint) -> Iterator[str]:
    client = endpoint.client()
    name = f"bench-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)


def add_latency(client: Any, seconds: float) -> None:
    """Model a network round trip: every request of ``client`` waits ``seconds`` first.

    Loopback has no latency, so on a small machine a request costs client and server CPU only
    and concurrency can win little; real S3 answers in tens of milliseconds, which is what
    concurrent requests hide. The wait is a ``time.sleep`` (it releases the GIL), applied alike
    to every contender of a comparison.
    """

    def wait(**_: Any) -> None:
        time.sleep(seconds)

    client.meta.events.register("before-send.s3", wait)
