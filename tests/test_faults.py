"""S3 faults (500, 503 SlowDown, resets, timeouts) under store_result / get_task_meta."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from celery import Celery

import celery_s3_envelope as cse
from celery_s3_envelope.store import S3Store
from support.faults import faults

pytestmark = pytest.mark.s3
ROUND_TRIPS = 500


def check_bucket(store: S3Store, keyring: cse.Keyring) -> int:
    """Every object in the bucket is a whole envelope that opens for its own key."""
    keys = [info.key for info in store.list("")]
    bodies = store.get_many(keys)
    for key in keys:
        cse.unseal(bodies[key] or b"", keyring=keyring, key=key)
    return len(keys)


def test_without_retries_every_error_is_one_celery_may_retry(
    make_app: Callable[..., Celery], store: S3Store, keyring: cse.Keyring
) -> None:
    backend = make_app(s3_max_attempts=1).backend  # botocore retries off: every fault surfaces
    ok, refused = 0, []
    with faults(backend.store.client, rate=0.2) as injector:
        for i in range(ROUND_TRIPS):
            task_id = str(uuid.uuid4())
            try:
                backend.store_result(task_id, {"n": i}, "SUCCESS")
                backend._cache.clear()
                assert backend.get_task_meta(task_id)["result"] == {"n": i}
                ok += 1
            except Exception as exc:
                refused.append(exc)
    assert sum(injector.injected.values()) > 100  # the faults really happened
    assert refused and ok > 0
    not_retryable = [e for e in refused if not backend.exception_safe_to_retry(e)]
    assert not_retryable == [], {type(e).__name__ for e in not_retryable}
    assert check_bucket(store, keyring) >= ok  # nothing partial or undecodable


def test_with_always_retry_every_round_trip_succeeds(
    make_app: Callable[..., Celery], store: S3Store, keyring: cse.Keyring
) -> None:
    backend = make_app(
        result_backend_always_retry=True,
        result_backend_base_sleep_between_retries_ms=1,
        result_backend_max_sleep_between_retries_ms=5,
        s3_max_attempts=1,
    ).backend
    with faults(backend.store.client, rate=0.2, seed=2) as injector:
        for i in range(ROUND_TRIPS):
            task_id = str(uuid.uuid4())
            backend.store_result(task_id, {"n": i}, "SUCCESS")
            backend._cache.clear()
            assert backend.get_task_meta(task_id)["result"] == {"n": i}
    assert sum(injector.injected.values()) > 100
    assert check_bucket(store, keyring) == ROUND_TRIPS
