"""What every command shares: click's context settings, the common options, and turning the
operations' ``SettingsError`` into one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from ..ops.context import Context, S3Options, SettingsError
from ..ops.sweep import DEFAULT_WORKERS

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

keyring_option = click.option(
    "--keyring",
    "keyring_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Keyring file (default: the Celery app's envelope_keyring, or "
    "$CELERY_S3_ENVELOPE_KEYRING).",
)
workers_option = click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Objects handled concurrently (threads).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


def s3_options(command: F) -> F:
    """``--bucket``, ``--prefix``, ``--endpoint-url``, ``--region`` on every S3-reading command;
    the command receives them as ``**options`` (``S3Options``' fields)."""
    for option in reversed(
        (
            click.option(
                "--bucket",
                metavar="NAME",
                help="Bucket (default: the Celery app's s3_bucket).",
            ),
            click.option(
                "--prefix",
                metavar="PREFIX",
                help="Key prefix (default: the Celery app's s3_base_path).",
            ),
            click.option(
                "--endpoint-url",
                metavar="URL",
                help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS, or the app's).",
            ),
            click.option("--region", metavar="REGION", help="S3 region (default: boto3's)."),
        )
    ):
        command = option(command)
    return command


def warn(message: str) -> None:
    """A warning as one line on stderr (a keyring's file mode, example keys)."""
    click.echo(f"Warning: {message}", err=True)


def context_of(ctx: click.Context, options: dict[str, Any]) -> Context:
    """The operations' context: under ``celery -A proj envelope`` click hands us Celery's
    ``CLIContext``, whose app supplies every setting an option leaves out."""
    app = getattr(ctx.obj, "app", None)
    return Context(options=S3Options(**options), app=app, on_warning=warn)


@contextmanager
def settings_errors() -> Iterator[None]:
    """A ``SettingsError`` (no keyring, no bucket, a bad app setting) as one line, status 1."""
    try:
        yield
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
