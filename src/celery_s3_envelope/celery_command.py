"""What Celery's own command line loads: the ``envelope`` sub-command (entry point group
``celery.commands``), and the worker hook that must not wait for configuration to be read.

``celery worker`` loads every ``celery.commands`` entry point before it starts, so this module is
imported in every worker. It applies ``envelope_redact`` at ``worker_init``, before the worker
builds its event dispatcher: otherwise only building the backend applies it, and with ``--quiet``
(no banner) the backend is built after the dispatcher, whose events then carry results. With the
``envelope`` serializer on, the same hook adds the consumer's check of sealed task messages.
"""

from __future__ import annotations

from typing import Any

from celery import signals  # type: ignore[import-untyped]

from .backend import EnvelopeS3Backend
from .cli import envelope
from .message_check import install_worker
from .messages import uses_envelope
from .redact import install

__all__ = ["envelope", "install_at_worker_start"]


def install_at_worker_start(sender: Any, **_: Any) -> None:
    """``worker_init`` receiver, before the worker builds its event dispatcher and consumer:
    ``redact.install`` for a worker whose result backend is ours or whose task messages are
    sealed (a chain's results are the next task's arguments), and the consumer's check of
    sealed messages (``message_check.install_worker``)."""
    app = sender.app
    if EnvelopeS3Backend.configured_for(app) or uses_envelope(app.conf):
        install(app)
    install_worker(app)


signals.worker_init.connect(install_at_worker_start, weak=False, dispatch_uid=__name__)
