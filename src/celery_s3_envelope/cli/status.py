"""Exit statuses, one table for every command (docs/cli.md), and the one place that turns an
S3 or KMS failure that stops a whole command into one line.

When several findings apply, the highest number wins.
"""

from __future__ import annotations

import sys
from enum import IntEnum

import click

from ..errors import error_code


class Status(IntEnum):
    """Every command's exit statuses (docs/cli.md, ``celery-s3-envelope --help``); when several
    apply, the highest number wins."""

    OK = 0  # done; nothing found
    DAMAGED = 1  # damaged, unverifiable or failed objects, or migrate's suspicious plaintext
    USAGE = 2  # usage or configuration error: an option, a setting, the keyring, no match
    PLAINTEXT = 3  # plaintext found: an object that is not an envelope
    RUNTIME = 4  # runtime failure: S3 or KMS unreachable, refusing or missing
    INTERRUPTED = 130  # Ctrl-C; the report says where to resume


class ConfigurationError(click.ClickException):
    exit_code = Status.USAGE


class RuntimeFailure(click.ClickException):
    exit_code = Status.RUNTIME


def runtime_failure(exc: BaseException) -> RuntimeFailure | None:
    """The one line for an S3/KMS error that stops a whole command; None for anything else."""
    if sys.modules.get("botocore.exceptions") is None:  # offline: cannot be botocore's
        return None
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    if isinstance(exc, ClientError):
        code = error_code(exc) or "?"
        if code == "NoSuchBucket":
            bucket = exc.response.get("Error", {}).get("BucketName")
            return RuntimeFailure(f"S3: no such bucket{f' {bucket!r}' if bucket else ''}")
        message = exc.response.get("Error", {}).get("Message") or ""
        return RuntimeFailure(f"S3 refused: {code} {message}".rstrip())
    if isinstance(exc, NoCredentialsError):
        return RuntimeFailure(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), "
            "or run as `celery -A proj envelope` to use the app's"
        )
    if isinstance(exc, NoRegionError):
        return RuntimeFailure("no AWS region: pass --region (or set AWS_DEFAULT_REGION)")
    if isinstance(exc, EndpointConnectionError):
        return RuntimeFailure(
            f"nothing answers at {exc.kwargs.get('endpoint_url', 'the endpoint')}"
        )
    if isinstance(exc, BotoCoreError):
        return RuntimeFailure(f"S3 request failed: {exc}")
    return None
