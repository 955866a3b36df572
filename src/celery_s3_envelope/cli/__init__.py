"""The command line: ``celery-s3-envelope ...`` and ``celery -A proj envelope ...``.

One click group, installed twice: the console script, and Celery's ``celery.commands`` entry point
(through ``celery_command``). Each command lives in a module of its own: ``decode`` (decode and
inspect), ``keys``, ``bulk`` (rotate, migrate, scan, lifecycle), ``demo``; ``options``,
``sources``, ``reports`` and ``distributed`` are what they share. The work itself is in ``ops``.

Importing this package imports neither Celery nor boto3: a file decodes offline without them.
"""

from __future__ import annotations

import click

from .. import __version__
from .bulk import lifecycle, migrate, rotate, scan
from .decode import decode, inspect
from .demo import demo
from .keys import keys
from .options import CONTEXT_SETTINGS
from .status import runtime_failure
from .tenants import shred, tenants

__all__ = ["envelope", "main"]


class EnvelopeGroup(click.Group):
    """The group: an S3 or KMS failure that stops a command is one line and status 4, never a
    traceback, whichever command it stops."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            failure = runtime_failure(exc)
            if failure is None:
                raise
            raise failure from None


@click.group(name="envelope", cls=EnvelopeGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="celery-s3-envelope")
def envelope() -> None:
    """Read, audit and key Celery results sealed by celery-s3-envelope.

    Standalone (`celery-s3-envelope ...`) S3 settings come from the options and boto3's usual
    credential chain; as a Celery sub-command (`celery -A proj envelope ...`) they come from
    the app's configuration, and options override them.

    \b
    Exit statuses, for every command (when several apply, the highest):
        0  done; nothing found
        1  damaged, unverifiable or failed objects, or migrate's suspicious plaintext
        2  usage or configuration error (an option, a setting, the keyring, no match)
        3  plaintext found: an object that is not an envelope
        4  runtime failure: S3 or KMS unreachable, refusing or missing
      130  interrupted

    \b
    Examples:
      celery-s3-envelope decode result.bin --keyring keys.json
      celery-s3-envelope inspect s3://my-results/celery/
      celery -A proj envelope inspect
      celery-s3-envelope keys add keys.json --activate-at +24h
    """


for _command in (decode, inspect, keys, demo, rotate, migrate, scan, shred, lifecycle):
    envelope.add_command(_command)


keys.add_command(tenants)


def main() -> None:
    """Console-script entry point."""
    envelope.main(prog_name="celery-s3-envelope")
