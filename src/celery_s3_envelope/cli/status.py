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
    OK = 0
    DAMAGED = 1
    USAGE = 2
    PLAINTEXT = 3
    RUNTIME = 4
    INTERRUPTED = 130


MEANING = {
    Status.OK: "done; nothing found",
    Status.DAMAGED: "damaged, unverifiable or failed objects (tampered, a KEK this keyring "
    "lacks, a write refused), or migrate's suspicious plaintext",
    Status.USAGE: "usage or configuration error: a bad option or setting, no keyring, no bucket, "
    "a source or prefix that matches no object",
    Status.PLAINTEXT: "plaintext found: an object that is not an envelope",
    Status.RUNTIME: "runtime failure: S3 or KMS unreachable, refusing or missing (no such bucket, "
    "no credentials, nothing at the endpoint)",
    Status.INTERRUPTED: "interrupted (Ctrl-C); the report says where to resume",
}
"""Every command's exit statuses (docs/cli.md); when several apply, the highest number wins."""


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
