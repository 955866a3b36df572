"""The command line run in-process, standalone or as ``celery -A app envelope ...`` runs it."""

from __future__ import annotations

import os

import click
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result


def invoke(
    command: click.Command,
    *args: str | os.PathLike[str],
    app: Celery | None = None,
    stdin: bytes | None = None,
) -> Result:
    """Run ``command`` with ``args``: standalone, or (``app``) with the app that ``celery -A app``
    hands its sub-commands."""
    obj = None if app is None else CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(command, [str(a) for a in args], input=stdin, obj=obj)
