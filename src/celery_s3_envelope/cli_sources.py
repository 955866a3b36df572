"""Where the command line reads envelopes from: files, stdin, and S3 objects or prefixes.

Kept apart from the commands so that the offline path (a file and a keyring) never imports
boto3 or Celery: the S3 and Celery-app code below is imported only when a source or setting
needs it, so a file decodes on a machine with neither configured.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .envelope import PREAMBLE_SIZE, header_length
from .errors import EnvelopeError, KeyringError
from .keyring import DEFAULT_ENV_VAR, Keyring

if TYPE_CHECKING:
    from .backend import EnvelopeS3Backend
    from .store import S3Store

F = TypeVar("F", bound=Callable[..., Any])

STDIN = "-"
S3_SCHEME = "s3://"
HEADER_PROBE = 4096
"""Bytes fetched to read a header: enough for any object key Celery writes."""


class SourceError(Exception):
    """A source could not be read (missing file, missing object, S3 refused); one-line reason."""


class SettingsError(Exception):
    """The command cannot run at all (no keyring, no bucket, bad app configuration)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One envelope to read: a file, stdin, or one S3 object."""

    name: str
    """How the user named it; every output line about this source starts with it."""
    path: Path | None = None
    bucket: str | None = None
    key: str | None = None
    """The S3 object key: what ``unseal`` checks the sealed-for key against (None for files)."""
    size: int | None = None
    """The object's size when a listing already told us."""

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None


@dataclass(frozen=True, slots=True)
class Prefix:
    """Every object under an S3 prefix (``s3://bucket/`` or ``s3://bucket/some/prefix/``)."""

    name: str
    bucket: str
    prefix: str


def parse_source(text: str) -> Source | Prefix:
    """``-``, ``s3://bucket/key``, ``s3://bucket[/prefix/]`` (trailing slash: listing), a path."""
    if text == STDIN:
        return Source(name="<stdin>")
    if text.startswith(S3_SCHEME):
        bucket, _, key = text[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise click.BadParameter(f"{text!r} names no bucket (s3://BUCKET/KEY)")
        if not key or key.endswith("/"):
            return Prefix(name=text, bucket=bucket, prefix=key)
        return Source(name=text, bucket=bucket, key=key)
    return Source(name=text, path=Path(text))


def read_local(source: Source) -> bytes:
    """A file's or stdin's bytes."""
    if source.path is None:
        return sys.stdin.buffer.read()
    try:
        return source.path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}") from None


def s3_options(command: F) -> F:
    """``--bucket``, ``--prefix``, ``--endpoint-url``, ``--region`` on every S3-reading command."""
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


@dataclass(frozen=True, slots=True)
class S3Options:
    """The S3 options a command was given; empty ones fall back to the Celery app's settings."""

    bucket: str | None = None
    prefix: str | None = None
    endpoint_url: str | None = None
    region: str | None = None


def load_keyring_file(path: Path) -> Keyring:
    """Load a keyring, turning its warnings (file mode, example keys) into one-line notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keyring = Keyring.from_file(path)
    for warning in caught:
        click.echo(f"Warning: {warning.message}", err=True)
    return keyring


@dataclass
class Workspace:
    """Everything a command needs beyond its arguments, resolved lazily: the Celery app (when
    run as ``celery envelope``), the keyring, and one S3 store per bucket."""

    options: S3Options = field(default_factory=S3Options)
    app: Any = None
    """The Celery app (celery ships no type information)."""
    _backend: EnvelopeS3Backend | None = None
    _stores: dict[str, S3Store] = field(default_factory=dict)

    @classmethod
    def from_context(cls, ctx: click.Context, options: S3Options | None = None) -> Workspace:
        """Under ``celery -A proj envelope`` click hands us Celery's ``CLIContext``."""
        app = getattr(ctx.obj, "app", None)
        return cls(options=options or S3Options(), app=app)

    # -- Celery app ---------------------------------------------------------------------------
    def backend(self) -> EnvelopeS3Backend:
        """The app's result backend, which must be this project's."""
        if self._backend is None:
            if self.app is None:
                raise SettingsError("no Celery app: run as `celery -A proj envelope ...`")
            from .backend import backend_from_app

            try:
                self._backend = backend_from_app(self.app)
            except Exception as exc:  # ImproperlyConfigured and friends: one line, no trace
                raise SettingsError(
                    f"Celery app {self.app.main or '?'!r}: result backend unusable: {exc}"
                ) from None
        return self._backend

    # -- keyring ------------------------------------------------------------------------------
    def keyring(self, path: Path | None) -> Keyring:
        """``--keyring PATH``, else the app's keyring, else ``$CELERY_S3_ENVELOPE_KEYRING``."""
        try:
            if path is not None:
                return load_keyring_file(path)
            if self.app is not None:
                return self.backend().keyring
            if os.environ.get(DEFAULT_ENV_VAR):
                return Keyring.from_env()
        except KeyringError as exc:
            raise SettingsError(f"keyring: {exc}") from None
        raise SettingsError(f"no keyring: pass --keyring PATH (or set {DEFAULT_ENV_VAR})")

    # -- S3 -----------------------------------------------------------------------------------
    def default_prefix(self) -> Prefix | None:
        """``--bucket``/``--prefix``, else the app's bucket and base path; None if neither."""
        bucket, prefix = self.options.bucket, self.options.prefix
        if bucket is None and self.app is not None:
            backend = self.backend()
            bucket = backend.bucket_name
            if prefix is None:
                prefix = backend.base_path or ""
        if bucket is None:
            return None
        prefix = prefix or ""
        return Prefix(name=f"{S3_SCHEME}{bucket}/{prefix}", bucket=bucket, prefix=prefix)

    def store(self, bucket: str) -> S3Store:
        """One store per bucket: the app's own when it is the app's bucket and no option
        overrides the endpoint, else a new client from the options and boto3's usual chain."""
        store = self._stores.get(bucket)
        if store is not None:
            return store
        overridden = self.options.endpoint_url is not None or self.options.region is not None
        if self.app is not None and not overridden:
            backend = self.backend()
            own = backend.bucket_name == bucket
            store = backend.store if own else _app_store(self.app, bucket)
        else:
            from .store import S3Store

            store = S3Store(
                bucket, endpoint_url=self.options.endpoint_url, region=self.options.region
            )
        self._stores[bucket] = store
        return store

    def read(self, source: Source) -> bytes:
        """The whole envelope."""
        if not source.is_s3:
            return read_local(source)
        assert source.bucket is not None and source.key is not None
        with aws_errors():
            data = self.store(source.bucket).get(source.key)
        if data is None:
            raise SourceError("no such object")
        return data

    def read_header(self, source: Source) -> tuple[bytes, int]:
        """Enough leading bytes to parse the header, and the whole object's size.

        S3 objects are read with ranged GETs so that inspecting a bucket of large results does
        not download them."""
        if not source.is_s3:
            data = read_local(source)
            return data, len(data)
        assert source.bucket is not None and source.key is not None
        store = self.store(source.bucket)
        with aws_errors():
            size = source.size
            if size is None:
                size = _object_size(store, source.key)
            head = store.get_range(source.key, 0, HEADER_PROBE - 1) if size else b""
            if head is None:
                raise SourceError("no such object")
            try:
                needed = header_length(head[:PREAMBLE_SIZE]) if len(head) >= PREAMBLE_SIZE else 0
            except EnvelopeError:
                needed = 0  # not an envelope: the caller's parse reports it
            if needed > len(head):
                more = store.get_range(source.key, len(head), needed - 1)
                head += more or b""
        return head, size

    def expand(self, prefix: Prefix) -> Iterator[Source]:
        """The objects under a prefix, in key order."""
        store = self.store(prefix.bucket)
        with aws_errors():
            for info in store.list(prefix.prefix):
                yield Source(
                    name=f"{S3_SCHEME}{prefix.bucket}/{info.key}",
                    bucket=prefix.bucket,
                    key=info.key,
                    size=info.size,
                )


def _object_size(store: S3Store, key: str) -> int:
    """An object's size from a one-page listing (the store has no HEAD of its own)."""
    for info in store.list(key):
        if info.key == key:
            return int(info.size)
        break
    raise SourceError("no such object")


def _app_store(app: Any, bucket: str) -> S3Store:
    """A store for another bucket on the app's own endpoint and credentials."""
    from .store import S3Store

    conf: Any = app.conf
    return S3Store(
        bucket,
        endpoint_url=conf.get("s3_endpoint_url"),
        region=conf.get("s3_region"),
        access_key_id=conf.get("s3_access_key_id"),
        secret_access_key=conf.get("s3_secret_access_key"),
    )


@contextmanager
def aws_errors(service: str = "S3") -> Iterator[None]:
    """Turn botocore's errors into one-line ``SourceError``s (their text holds no secrets):
    S3's while reading a source, KMS's (no credentials, no region, refused) while opening one."""
    try:
        yield
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            if code in ("NoSuchKey", "404"):
                raise SourceError("no such object") from None
            if code == "NoSuchBucket":
                raise SourceError("no such bucket") from None
            message = error.get("Message", "")
            raise SourceError(f"{service} refused: {code} {message}".rstrip()) from None
        if isinstance(exc, BotoCoreError):
            raise SourceError(f"{service} request failed: {exc}") from None
        raise
