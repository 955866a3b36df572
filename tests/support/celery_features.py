"""What the installed Celery offers, read from Celery itself (not from the backend under test),
for tests of features newer Celery releases added. ``make test-compat`` runs the Celery-facing
tests on every supported minor; a test of a feature the installed Celery lacks is skipped with a
reason naming that feature, and only then.
"""

from __future__ import annotations

import celery
import pytest
from celery.app.defaults import NAMESPACES
from celery.backends.base import Backend

CELERY = celery.__version__

RESULT_COMPRESSION = hasattr(Backend, "prepare_compression")
"""Celery 5.7: backends compress results by ``result_compression`` (older releases list the
setting but never apply it)."""
RESULT_CHORD_EXPIRES = "chord_expires" in NAMESPACES["result"]
"""Celery 5.7: ``result_chord_expires``; before it chord counters expire with results."""
RESULT_FAILURE_EXPIRES = "failure_expires" in NAMESPACES["result"]
"""Celery 5.7: ``result_failure_expires`` is a Celery setting (this backend reads it on any
Celery)."""


def needs(feature: bool, name: str, added_in: str = "5.7") -> pytest.MarkDecorator:
    """Skip unless the installed Celery has ``name`` (a feature added in Celery ``added_in``)."""
    return pytest.mark.skipif(
        not feature, reason=f"Celery {CELERY} has no {name} (added in Celery {added_in})"
    )


needs_result_compression = needs(RESULT_COMPRESSION, "result_compression")
needs_result_chord_expires = needs(RESULT_CHORD_EXPIRES, "result_chord_expires")
