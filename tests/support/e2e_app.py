"""The Celery app of ``support.worker``'s workers: the worker subprocess and the test share it.

The worker imports this module (``celery -A support.e2e_app worker``) and configures the app from
the JSON in ``E2E_CELERY_CONFIG``; the test calls ``make_app`` with the same dictionary. Results
are derived from the arguments through a hash, so a result's text never appears in its arguments:
finding it anywhere (a bucket object, a log line) means the result itself leaked. (The redaction
tests expect tracebacks to name this file ``e2e_app.py``.)
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from celery import Celery

CONFIG_VARIABLE = "E2E_CELERY_CONFIG"
CALLBACK_LOG_SETTING = "e2e_callback_log"
PUT_LOG_VARIABLE = "E2E_PUT_LOG"
"""A file to which each worker process appends ``bucket/key`` for every object PUT it made: the
distributed tests count rewrites with it, on any server (bucket versions cannot: Ceph RGW 16
does not honour conditional writes on a versioned bucket, docs/compatibility.md)."""


def _log_object_puts(path: str) -> None:
    from celery_s3_envelope.store import S3Store

    put = S3Store.put

    def logged(self: S3Store, key: str, body: bytes, **kwargs: Any) -> str:
        etag = put(self, key, body, **kwargs)
        with open(path, "a", encoding="utf-8") as handle:  # one short append: atomic
            handle.write(f"{self.bucket}/{key}\n")
        return etag

    S3Store.put = logged  # type: ignore[method-assign]


if os.environ.get(PUT_LOG_VARIABLE):  # set for the worker's environment only
    _log_object_puts(os.environ[PUT_LOG_VARIABLE])


def secret(kind: str, token: str, number: int) -> str:
    """The plaintext a task produces for ``(token, number)``: unguessable from its arguments."""
    digest = hashlib.sha256(f"{kind}:{token}:{number}".encode()).hexdigest()[:24]
    return f"{kind}-{digest}"


class E2EFailure(ValueError):
    """What ``fail`` raises: a traceback in the result, a plaintext message in the exception."""


def tenant_of(request: Any) -> str | None:
    """The tenant selector of the tenant tests (``envelope_tenant_selector``): the ``tenant``
    keyword argument, when the task has one."""
    tenant = request.kwargs.get("tenant")
    return None if tenant is None else str(tenant)


def make_app(config: dict[str, Any]) -> Celery:
    app = Celery("e2e_app", set_as_current=False)
    app.conf.update(config)

    @app.task(name="e2e.echo")
    def echo(number: int, token: str) -> dict[str, Any]:
        return {"number": number, "secret": secret("result", token, number)}

    @app.task(name="e2e.fail")
    def fail(number: int, token: str) -> None:
        raise E2EFailure(secret("failure", token, number))

    @app.task(name="e2e.collect")
    def collect(parts: list[dict[str, Any]], token: str) -> dict[str, Any]:
        # One line per run: the test counts the lines to prove the callback ran exactly once.
        with open(app.conf[CALLBACK_LOG_SETTING], "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        return {
            "count": len(parts),
            "total": sum(part["number"] for part in parts),
            "secret": secret("chord", token, len(parts)),
        }

    @app.task(name="e2e.relay")
    def relay(previous: dict[str, Any], token: str) -> dict[str, Any]:
        # A chain's second task: its argument is the first task's result.
        return {
            "from": previous["secret"][-8:],
            "secret": secret("relay", token, previous["number"]),
        }

    @app.task(name="e2e.keywords")
    def keywords(*, number: int, token: str) -> dict[str, Any]:
        return {"number": number, "secret": secret("keywords", token, number)}

    @app.task(name="e2e.flaky", bind=True, max_retries=3)
    def flaky(self: Any, number: int, token: str) -> dict[str, Any]:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return {"retries": self.request.retries, "secret": secret("retried", token, number)}

    @app.task(name="e2e.tenant_echo")
    def tenant_echo(number: int, token: str, tenant: str) -> dict[str, Any]:
        # the tenant selector (``tenant_of``) reads ``tenant`` from the task's kwargs
        return {"number": number, "secret": secret("result", token, number)}

    @app.task(name="e2e.sentinel")
    def sentinel() -> str:
        return "done"

    return app


app = make_app(json.loads(os.environ[CONFIG_VARIABLE])) if CONFIG_VARIABLE in os.environ else None
