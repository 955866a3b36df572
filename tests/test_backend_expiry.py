"""Expiry: ``cleanup()`` for ``result_expires``, ``result_failure_expires`` and Celery 5.7's
``result_chord_expires``, on every supported Celery (``make test-compat``), and the object tag that
lets a lifecycle rule tell failures apart."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import states

from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.lifecycle import EXPIRY_TAG
from support.apps import MakeApp, backend_of
from support.celery_features import needs_result_chord_expires
from support.s3 import count_requests

HOUR = 3600.0


def keys(backend: EnvelopeS3Backend) -> set[str]:
    return {info.key for info in backend.store.list()}


def later(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def store_some(backend: EnvelopeS3Backend) -> None:
    backend.store_result("ok", "fine", states.SUCCESS)
    backend.store_result("bad", ValueError("broken"), states.FAILURE)
    backend.store_result("busy", None, states.STARTED)


def test_cleanup_deletes_only_expired_objects_under_the_prefix(
    make_app: MakeApp, s3_endpoint: Any, bucket: str
) -> None:
    backend = backend_of(make_app(s3_base_path="app/", result_expires=HOUR))
    store_some(backend)
    backend.set(backend.get_key_for_group("g"), "group")
    backend.set(backend.get_key_for_chord("g"), "3")
    neighbour = s3_endpoint.store(bucket)
    neighbour.put("app/not-a-result", b"x")
    neighbour.put("elsewhere/celery-task-meta-x", b"x")
    everything = keys(backend)

    backend.cleanup(now=later(0.5))
    assert keys(backend) == everything
    with count_requests(backend.store.client) as requests:
        backend.cleanup(now=later(2))
    assert keys(backend) == {"app/not-a-result", "elsewhere/celery-task-meta-x"}
    assert requests.methods.count("POST") == 1  # one batched DeleteObjects for all five


def test_celerys_own_cleanup_task_deletes_expired_results(make_app: MakeApp) -> None:
    """What Celery runs daily (``celery.backend_cleanup``, from beat) calls ``cleanup()`` with no
    arguments: it must delete what has expired under the installed Celery, whatever its version."""
    app = make_app(result_expires=1)
    backend = backend_of(app)
    store_some(backend)
    backend.set(backend.get_key_for_group("g"), "group")
    backend.set(backend.get_key_for_chord("g"), "3")
    assert len(keys(backend)) == 5
    time.sleep(2.2)  # LastModified has whole seconds: every object is now over a second old
    outcome = app.tasks["celery.backend_cleanup"].apply()
    assert outcome.successful(), outcome.traceback
    assert keys(backend) == set()


@needs_result_chord_expires
def test_chord_counters_expire_by_result_chord_expires(make_app: MakeApp) -> None:
    backend = backend_of(make_app(result_expires=HOUR, result_chord_expires=5 * HOUR))
    backend.store_result("ok", "fine", states.SUCCESS)
    backend.set(backend.get_key_for_group("g"), "group")
    backend.set(backend.get_key_for_chord("g"), "3")
    backend.cleanup(now=later(2))
    assert keys(backend) == {"chord-unlock-g"}
    backend.cleanup(now=later(6))
    assert keys(backend) == set()


@pytest.mark.parametrize(
    ("failure_hours", "left_after_3h"),
    [
        (1, {"ok", "busy"}),  # failures go sooner
        (5, {"bad"}),  # failures are kept longer
    ],
)
def test_failure_expires(make_app: MakeApp, failure_hours: float, left_after_3h: set[str]) -> None:
    app = make_app(result_expires=2 * HOUR, result_failure_expires=failure_hours * HOUR)
    backend = backend_of(app)
    store_some(backend)
    backend.cleanup(now=later(0.5))
    assert len(keys(backend)) == 3
    backend.cleanup(now=later(1.5 if failure_hours == 1 else 3))
    assert keys(backend) == {f"celery-task-meta-{t}" for t in left_after_3h}
    backend.cleanup(now=later(6))
    assert keys(backend) == set()


def test_no_expiry_keeps_everything(make_app: MakeApp) -> None:
    backend = backend_of(make_app(result_expires=None))
    store_some(backend)
    backend.cleanup(now=later(24 * 365))
    assert len(keys(backend)) == 3


def test_unreadable_result_waits_for_the_longer_expiry(
    make_app: MakeApp, s3_endpoint: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = backend_of(make_app(result_expires=HOUR, result_failure_expires=5 * HOUR))
    s3_endpoint.store(bucket).put("celery-task-meta-garbled", b"\xe5CSE not really")
    with caplog.at_level(logging.WARNING):
        backend.cleanup(now=later(2))
    assert keys(backend) == {"celery-task-meta-garbled"}
    assert "cannot read the state of 'celery-task-meta-garbled'" in caplog.text
    backend.cleanup(now=later(6))
    assert keys(backend) == set()


def test_expiry_class_tag_only_with_failure_expires(
    make_app: MakeApp, s3_client: Any, bucket: str
) -> None:
    def tags(key: str) -> dict[str, str]:
        tag_set = s3_client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    tagged = backend_of(make_app(result_failure_expires=HOUR))
    store_some(tagged)
    assert tags("celery-task-meta-bad") == {EXPIRY_TAG: "failure"}
    assert tags("celery-task-meta-ok") == {EXPIRY_TAG: "default"}
    assert tags("celery-task-meta-busy") == {EXPIRY_TAG: "default"}

    plain = backend_of(make_app())
    plain.store_result("untagged", ValueError("x"), states.FAILURE)
    assert tags("celery-task-meta-untagged") == {}
