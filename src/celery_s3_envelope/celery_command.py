"""What Celery's own command line loads: the ``envelope`` sub-command (entry point group
``celery.commands``), and the worker hook that must not wait for configuration to be read.

``celery worker`` loads every ``celery.commands`` entry point before it starts, so this module is
imported in every worker. It applies ``envelope_redact`` at ``worker_init``, before the worker
builds its event dispatcher: otherwise only building the backend applies it, and with ``--quiet``
(no banner) the backend is built after the dispatcher, whose events then carry results.
"""

from __future__ import annotations

from typing import Any

from celery import signals  # type: ignore[import-untyped]

from .backend import EnvelopeS3Backend
from .cli import envelope
from .redact import install

__all__ = ["envelope", "install_at_worker_start"]


def install_at_worker_start(sender: Any, **_: Any) -> None:
    """``worker_init`` receiver: ``redact.install`` for a worker whose result backend is ours,
    before the worker builds its event dispatcher."""
    if EnvelopeS3Backend.configured_for(sender.app):
        install(sender.app)


signals.worker_init.connect(install_at_worker_start, weak=False, dispatch_uid=__name__)
