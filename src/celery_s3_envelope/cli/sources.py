"""Where ``decode`` and ``inspect`` read envelopes from: files, stdin, and S3 objects or prefixes.

The offline path (a file and a keyring) never imports boto3 or Celery: the S3 code is reached
only through ``ops.context.Context.store``, when a source names an object, so a file decodes on
a machine with neither configured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import click

from ..envelope import MAX_HEADER_SIZE, PREAMBLE_SIZE
from ..errors import SizeLimitExceeded, error_code
from ..ops.context import S3_SCHEME, Context, Prefix, SettingsError
from ..ops.sweep import holds_run_state, is_key_store
from ..pipeline import DEFAULT_MAX_SIZE, largest_envelope
from .status import ConfigurationError, Status

STDIN = "-"
READ_CHUNK = 1024 * 1024


class SourceError(Exception):
    """A source could not be read (missing file, missing object, S3 refused); one-line reason,
    and the exit status it stands for (a usage error, or a runtime failure of S3 or KMS)."""

    def __init__(self, message: str, status: Status = Status.USAGE) -> None:
        super().__init__(message)
        self.status = status


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

    @property
    def is_stdin(self) -> bool:
        return self.path is None and not self.is_s3


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


def sources_of(
    context: Context, texts: Sequence[str], on_error: Callable[[str, Exception], None]
) -> list[Source]:
    """Every SOURCE argument expanded (S3 prefixes listed); no argument means the default
    bucket and prefix. A prefix that cannot be listed is reported and counts as a failure."""
    if texts and (context.options.bucket is not None or context.options.prefix is not None):
        raise click.UsageError("--bucket and --prefix name what to read when no SOURCE is given")
    try:
        targets: list[Source | Prefix] = [parse_source(text) for text in texts]
        if not targets:
            default = context.default_prefix()
            if default is None:
                raise click.UsageError("give at least one SOURCE (a file, -, or s3://BUCKET/KEY)")
            targets = [default]
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from None
    if sum(1 for t in targets if isinstance(t, Source) and t.is_stdin) > 1:
        raise click.UsageError("stdin (-) can be read only once")
    sources: list[Source] = []
    for target in targets:
        if isinstance(target, Source):
            sources.append(target)
            continue
        try:
            found = list(expand(context, target))
        except (SourceError, SettingsError) as exc:
            on_error(target.name, exc)
            continue
        if not found:  # a mistyped prefix must not pass an audit silently
            on_error(target.name, SourceError("no object under this prefix: check its spelling"))
        sources.extend(found)
    return sources


def read_local(source: Source) -> bytes:
    """A file's or stdin's bytes; one larger than any envelope the commands open is refused
    before it is read (its size for a file, a bounded read for stdin or a device)."""
    limit = largest_envelope(DEFAULT_MAX_SIZE)
    try:
        if source.path is None:
            data = _read_at_most(sys.stdin.buffer, limit + 1)
        else:
            size = source.path.stat().st_size
            if size > limit:
                raise SizeLimitExceeded(f"{size} bytes, more than any envelope ({limit})")
            with source.path.open("rb") as handle:
                data = _read_at_most(handle, limit + 1)
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise SizeLimitExceeded(f"more than {limit} bytes, more than any envelope")
    return data


def _read_at_most(handle: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes, in chunks: ``read(limit)`` would allocate ``limit`` up front."""
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = handle.read(min(READ_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read(context: Context, source: Source) -> bytes:
    """The whole envelope."""
    if not source.is_s3:
        return read_local(source)
    assert source.bucket is not None and source.key is not None
    with aws_errors():
        data = context.store(source.bucket).get(source.key)
    if data is None:
        raise SourceError("no such object")
    return data


def read_header(context: Context, source: Source) -> tuple[bytes, int]:
    """Enough leading bytes to parse the header, and the whole object's size.

    S3 objects are read with ranged GETs (``ops.scan.read_head``, as ``scan`` reads them), so
    that inspecting a bucket of large results does not download them."""
    if source.path is not None:  # a file: its header only, whatever its size
        try:
            with source.path.open("rb") as handle:
                head = handle.read(PREAMBLE_SIZE + MAX_HEADER_SIZE)
                return head, os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise SourceError(f"cannot read file: {exc.strerror or exc}") from None
    if not source.is_s3:
        data = read_local(source)
        return data, len(data)
    from ..ops.scan import read_head

    assert source.bucket is not None and source.key is not None
    store = context.store(source.bucket)
    with aws_errors():
        size = source.size
        if size is None:
            size = _object_size(context, source.bucket, source.key)
        found = read_head(store, source.key, size)
    if found is None:
        raise SourceError("no such object")
    return found, size


def expand(context: Context, prefix: Prefix) -> Iterator[Source]:
    """The objects under a prefix, in key order."""
    store = context.store(prefix.bucket)
    with aws_errors():
        for info in store.list(prefix.prefix):
            if holds_run_state(info.key) or is_key_store(info.key, ""):
                continue  # a --distributed run's own JSON, a tenant key record: not results
            yield Source(
                name=f"{S3_SCHEME}{prefix.bucket}/{info.key}",
                bucket=prefix.bucket,
                key=info.key,
                size=info.size,
            )


def _object_size(context: Context, bucket: str, key: str) -> int:
    """An object's size from a one-page listing (the store has no HEAD of its own)."""
    for info in context.store(bucket).list(key):
        if info.key == key:
            return int(info.size)
        break
    raise SourceError("no such object")


@contextmanager
def aws_errors(service: str = "S3") -> Iterator[None]:
    """Turn botocore's errors into one-line ``SourceError``s (their text holds no secrets):
    S3's while reading a source, KMS's (no credentials, no region, refused) while opening one."""
    try:
        yield
    except Exception as exc:
        if sys.modules.get("botocore.exceptions") is None:  # offline: cannot be botocore's
            raise
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = error_code(exc) or "?"
            if code in ("NoSuchKey", "404"):
                raise SourceError("no such object") from None
            if code == "NoSuchBucket":
                raise SourceError("no such bucket", Status.RUNTIME) from None
            message = exc.response.get("Error", {}).get("Message", "")
            reason = f"{service} refused: {code} {message}".rstrip()
            raise SourceError(reason, Status.RUNTIME) from None
        if isinstance(exc, BotoCoreError):
            raise SourceError(f"{service} request failed: {exc}", Status.RUNTIME) from None
        raise
