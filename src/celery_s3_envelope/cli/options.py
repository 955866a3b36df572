"""What every command shares: click's context settings, the common options, and turning the
operations' ``SettingsError`` into one line."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from ..ops.context import Context, Prefix, S3Options, SettingsError
from ..ops.sweep import DEFAULT_WORKERS
from .status import ConfigurationError

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
    """``--bucket``, ``--prefix``, ``--endpoint-url``, ``--region``, ``--profile`` on every
    S3-reading command;
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
                callback=_endpoint_url,
                help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS, or the app's).",
            ),
            click.option("--region", metavar="REGION", help="S3 region (default: boto3's)."),
            click.option(
                "--profile",
                metavar="NAME",
                help="AWS profile for S3 and KMS (default: boto3's; standalone only).",
            ),
        )
    ):
        command = option(command)
    return command


_AHEAD = re.compile(r"\+(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Moment(click.ParamType):  # type: ignore[type-arg]
    """A point in time: ISO 8601 (UTC when it names no zone), ``now``, or ``+N`` seconds,
    minutes, hours or days from now (``+24h``)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if text.lower() == "now":
            return datetime.now(UTC)
        ahead = _AHEAD.fullmatch(text)
        if ahead:
            seconds = int(ahead.group(1)) * _UNIT_SECONDS[ahead.group(2)]
            return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a time: ISO 8601 (2026-12-02T00:00:00Z), now, or +N[smhd]",
                param,
                ctx,
            )
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    """A ``SettingsError`` (no keyring, no bucket, a bad app setting) as one line, status 2."""
    try:
        yield
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from None


def target_of(ctx: click.Context, options: dict[str, Any]) -> tuple[Context, Prefix]:
    """The command's context and the bucket and prefix it works on (``--bucket``/``--prefix``,
    else the Celery app's), or a usage error naming what is missing."""
    context = context_of(ctx, options)
    with settings_errors():
        prefix = context.default_prefix()
    if prefix is None:
        raise click.UsageError("which bucket? pass --bucket (or run as `celery -A proj envelope`)")
    return context, prefix


def _endpoint_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise click.BadParameter(f"{value!r} is not an http(s):// URL", ctx, param)
    return value
