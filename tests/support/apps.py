"""Celery apps in tests: the type of conftest's ``make_app`` fixture, and an app's backend."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from celery_s3_envelope.backend import EnvelopeS3Backend

MakeApp = Callable[..., Celery]
"""``make_app(**conf)`` (tests/conftest.py): an app whose result backend is ours."""


def backend_of(app: Celery) -> EnvelopeS3Backend:
    """The app's result backend, which must be ours."""
    backend = app.backend
    assert isinstance(backend, EnvelopeS3Backend)
    return backend
