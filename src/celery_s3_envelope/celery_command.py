"""What Celery's own command line loads: the ``envelope`` sub-command (entry point group
``celery.commands``), and the worker hook that must not wait for configuration to be read.

``celery worker`` loads every ``celery.commands`` entry point before it starts, so this module is
imported in every worker. It applies ``envelope_redact`` at ``worker_init``, before the worker
builds its event dispatcher: otherwise only building the backend applies it, and with ``--quiet``
(no banner) the backend is built after the dispatcher, whose events then carry results.
"""

from __future__ import annotations

from celery import signals  # type: ignore[import-untyped]

from .cli import envelope
from .redact import install_at_worker_start

__all__ = ["envelope"]

signals.worker_init.connect(install_at_worker_start, weak=False, dispatch_uid=__name__)
