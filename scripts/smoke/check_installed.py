"""What ``scripts/smoke.py`` runs with the installed wheel, in an empty folder: the package comes
from the virtual environment's site-packages, never from ``src/``.

Prints one line per check; any failure raises, and the exit status is then not 0.
"""

import json
import sys
import sysconfig
from importlib.metadata import distribution
from pathlib import Path

import celery_s3_envelope as cse
from celery_s3_envelope.envelope import is_envelope


def check(what: str, condition: bool) -> None:
    if not condition:
        raise SystemExit(f"smoke: FAILED: {what}")
    print(f"smoke: ok: {what}")


def main() -> None:
    expected_version, keyring_path = sys.argv[1], Path(sys.argv[2])
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    package = Path(cse.__file__).resolve().parent
    check(f"the package is the installed one ({package})", package.parent == site_packages)
    dist = distribution("celery-s3-envelope")
    check(f"version {dist.version}", dist.version == expected_version)
    files = {str(path) for path in dist.files or ()}
    check("py.typed is installed", "celery_s3_envelope/py.typed" in files)
    licence = [name for name in files if name.endswith(".dist-info/licenses/LICENSE")]
    check("LICENSE is installed with the metadata", len(licence) == 1)
    check(
        "the licence is Apache-2.0",
        dist.metadata["License-Expression"] == "Apache-2.0"
        and "Apache License" in dist.locate_file(licence[0]).read_text(),
    )

    # The Python API (README, "Python API"), with the keyring `keys generate` wrote.
    keyring = cse.Keyring.from_file(keyring_path)
    key = "celery-task-meta-smoke"
    envelope = cse.seal('{"status": "SUCCESS"}', key=key, keyring=keyring)
    check("seal gives an envelope", is_envelope(envelope) and b"SUCCESS" not in envelope)
    check(
        "unseal gives the value back",
        cse.unseal(envelope, keyring=keyring, key=key) == '{"status": "SUCCESS"}',
    )
    check("inspect reads the header", cse.inspect(envelope).kek_id == keyring.active.id)

    # The backend, configured as README says, against the local S3 server.
    from celery import states
    from celery.result import AsyncResult
    from smoke_app import app

    backend = app.backend
    check(
        f"the app's backend is EnvelopeS3Backend ({type(backend).__name__})",
        type(backend).__name__ == "EnvelopeS3Backend",
    )
    value = {"invoice": "INV-smoke-0042", "total": 1234.5}
    backend.store_result("smoke-1", value, states.SUCCESS)
    check("a stored result reads back", AsyncResult("smoke-1", app=app).get(timeout=10) == value)
    body = backend.store.get("celery/celery-task-meta-smoke-1")
    check(
        "the object in the bucket is sealed",
        body is not None and cse.inspect(body).key == "celery/celery-task-meta-smoke-1",
    )
    check("the object holds no plaintext", b"INV-smoke-0042" not in body)
    Path("result.bin").write_bytes(body)
    print(json.dumps({"stored": "celery/celery-task-meta-smoke-1"}))


if __name__ == "__main__":
    main()
