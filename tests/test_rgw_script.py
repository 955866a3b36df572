"""scripts/ceph-rgw.sh: `up` serves S3, and `down` (or an interrupted `up`) leaves nothing behind.

The tests that start Ceph are marked ``ceph``: `make test-rgw` runs them (when it starts its own
server as root, it has installed Ceph by then); `make test` and `make test-all` leave them out, so
those stay moto-only even where Ceph is installed. Selected, they run only where Debian's Ceph
packages are installed (the script itself needs no root then), or when CEPH_RGW_TEST=1 asks for
them (as root, the script then installs the packages); otherwise, or with CEPH_RGW_TEST=0, they
skip and say why.

Processes are counted by what they run on (`-c DIR/ceph.conf`), never by name: other Ceph
clusters, e.g. the one `make test-rgw` runs the suite against, may come and go meanwhile.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from support.paths import ROOT

SCRIPT = ROOT / "scripts" / "ceph-rgw.sh"
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")
UP_TIMEOUT = 300  # seconds; includes installing the packages when CEPH_RGW_TEST=1 asks for it
DOWN_TIMEOUT = 60


def _why_not_runnable() -> str | None:
    asked = os.environ.get("CEPH_RGW_TEST", "")
    if asked == "1":
        return None
    if asked == "0":
        return "CEPH_RGW_TEST=0"
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if not missing:
        return None
    return (
        f"scripts/ceph-rgw.sh needs Debian's Ceph packages, and {' '.join(missing)} are missing:"
        " apt-get install ceph-mon ceph-osd radosgw ceph-common, or CEPH_RGW_TEST=1 (as root:"
        " the script installs them)"
    )


_NOT_RUNNABLE = _why_not_runnable()
needs_ceph = pytest.mark.skipif(_NOT_RUNNABLE is not None, reason=_NOT_RUNNABLE or "")


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def processes_using(path: Path) -> dict[int, str]:
    """Live processes whose command line contains ``path`` (zombies have none)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found[int(entry.name)] = cmdline
    return found


def daemons_of(rgw_dir: Path) -> dict[int, str]:
    """The Ceph daemons running on ``rgw_dir``'s cluster configuration."""
    signature = f" -c {rgw_dir}/ceph.conf"
    return {pid: cmd for pid, cmd in processes_using(rgw_dir).items() if signature in cmd}


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = value
    return values


def refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.fixture
def rgw_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path.resolve() / "rgw"
    yield path
    # Whatever happened in the test: stop anything it left running.
    if path.exists():
        run_script("down", str(path), timeout=DOWN_TIMEOUT)


@needs_ceph
@pytest.mark.ceph
def test_up_serves_s3_and_down_leaves_no_process_and_no_directory(rgw_dir: Path) -> None:
    assert daemons_of(rgw_dir) == {}

    started = time.monotonic()
    up = run_script("up", str(rgw_dir), timeout=UP_TIMEOUT)
    assert up.returncode == 0, up.stderr
    up_seconds = time.monotonic() - started

    env = read_env(rgw_dir / "env")
    assert set(env) >= {
        "S3_TEST_ENDPOINT_URL",
        "S3_TEST_ACCESS_KEY_ID",
        "S3_TEST_SECRET_ACCESS_KEY",
        "S3_TEST_REGION",
    }
    assert urlsplit(env["S3_TEST_ENDPOINT_URL"]).hostname == "127.0.0.1"
    recorded = {
        int(pid): name
        for name, pid in (line.split() for line in (rgw_dir / "pids").read_text().splitlines())
    }
    assert sorted(recorded.values()) == ["mon", "osd", "rgw"]
    running = daemons_of(rgw_dir)
    assert set(running) == set(recorded), running  # three daemons, all of them recorded

    client = boto3.session.Session(
        aws_access_key_id=env["S3_TEST_ACCESS_KEY_ID"],
        aws_secret_access_key=env["S3_TEST_SECRET_ACCESS_KEY"],
        region_name=env["S3_TEST_REGION"],
    ).client("s3", endpoint_url=env["S3_TEST_ENDPOINT_URL"])
    bucket = f"script-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="k", Body=b"value", IfNoneMatch="*")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"value"
    client.delete_object(Bucket=bucket, Key="k")
    client.delete_bucket(Bucket=bucket)

    down = run_script("down", str(rgw_dir), timeout=DOWN_TIMEOUT)
    assert down.returncode == 0, down.stderr
    assert not rgw_dir.exists()
    assert processes_using(rgw_dir) == {}
    for pid in recorded:  # each exited (or its PID now names another program)
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or str(rgw_dir) not in cmdline.read_text(errors="replace")
    assert refuses_connections(env["S3_TEST_ENDPOINT_URL"])

    again = run_script("down", str(rgw_dir), timeout=DOWN_TIMEOUT)
    assert again.returncode == 0, again.stderr  # nothing to stop: not an error
    assert up_seconds < 60


@needs_ceph
@pytest.mark.ceph
def test_interrupted_up_stops_what_it_started_and_removes_its_directory(rgw_dir: Path) -> None:
    up = subprocess.Popen(
        [str(SCRIPT), "up", str(rgw_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = rgw_dir / "pids"
        deadline = time.monotonic() + UP_TIMEOUT
        while not (pids.exists() and len(pids.read_text().splitlines()) >= 1):
            assert up.poll() is None, up.communicate()[1]
            assert time.monotonic() < deadline, "the monitor never started"
            time.sleep(0.02)
        assert daemons_of(rgw_dir)  # the monitor at least is running
        up.send_signal(signal.SIGTERM)
        _, stderr = up.communicate(timeout=DOWN_TIMEOUT)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode != 0, stderr
    assert not rgw_dir.exists(), stderr
    assert processes_using(rgw_dir) == {}


def test_up_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    refused = run_script("up", str(tmp_path), timeout=30)
    assert refused.returncode == 1
    assert "not an empty directory" in refused.stderr
    assert (tmp_path / "precious").read_text() == "keep me"


def test_down_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    refused = run_script("down", str(tmp_path), timeout=30)
    assert refused.returncode == 1
    assert "not touching it" in refused.stderr
    assert (tmp_path / "precious").read_text() == "keep me"
    assert run_script("down", str(tmp_path / "absent"), timeout=30).returncode == 0


def test_down_removes_an_empty_directory(tmp_path: Path) -> None:
    # What `make test-rgw`'s trap passes when `up` failed before writing anything (Ceph missing).
    empty = tmp_path / "empty"
    empty.mkdir()
    removed = run_script("down", str(empty), timeout=30)
    assert removed.returncode == 0, removed.stderr
    assert not empty.exists()


def test_usage() -> None:
    assert run_script("sideways", "/nowhere", timeout=30).returncode == 2
