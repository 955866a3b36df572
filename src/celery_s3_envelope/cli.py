"""The command line: ``celery-s3-envelope ...`` and ``celery -A proj envelope ...``.

One click group, installed twice: the console script, and Celery's ``celery.commands`` entry point
(through ``celery_command``).
``decode`` and ``inspect`` live here; key management is in ``keys_cli``, the demo in ``demo``,
reading sources (files, stdin, S3) in ``cli_sources``.

Exit status: 0 when every source was handled, 1 when any failed (one ``Error: SOURCE: reason``
line on stderr each, never a traceback), 2 for usage errors.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from . import __version__
from .cli_sources import (
    Prefix,
    S3Options,
    SettingsError,
    Source,
    SourceError,
    Workspace,
    aws_errors,
    parse_source,
    s3_options,
)
from .demo import demo
from .envelope import TAG_SIZE, Compression, EnvelopeHeader
from .errors import (
    EnvelopeError,
    IntegrityError,
    NotAnEnvelope,
    SizeLimitExceeded,
)
from .keys_cli import keys
from .ops_cli import lifecycle, migrate, rotate, scan
from .pipeline import Pipeline
from .pipeline import inspect as inspect_header

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(name="envelope", context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="celery-s3-envelope")
def envelope() -> None:
    """Read, audit and key Celery results sealed by celery-s3-envelope.

    Standalone (`celery-s3-envelope ...`) S3 settings come from the options and boto3's usual
    credential chain; as a Celery sub-command (`celery -A proj envelope ...`) they come from
    the app's configuration, and options override them.

    \b
    Examples:
      celery-s3-envelope decode result.bin --keyring keys.json
      celery-s3-envelope inspect s3://my-results/celery/
      celery -A proj envelope inspect
      celery-s3-envelope keys add keys.json --activate
    """


def main() -> None:
    """Console-script entry point."""
    envelope.main(prog_name="celery-s3-envelope")


# -- shared options ---------------------------------------------------------------------------


def _workspace(ctx: click.Context, **options: str | None) -> Workspace:
    return Workspace.from_context(ctx, S3Options(**options))


def _fail_settings(exc: SettingsError) -> click.ClickException:
    return click.ClickException(str(exc))


def _reason(exc: Exception) -> str:
    """One line saying why a source failed; the core's messages never hold secrets."""
    if isinstance(exc, NotAnEnvelope):
        return "not an envelope (no envelope magic: plaintext or another format)"
    if isinstance(exc, IntegrityError):
        return f"integrity check failed: {exc}"
    if isinstance(exc, SizeLimitExceeded):
        return f"refused, too large: {exc}"
    return str(exc)


def _report_failure(source_name: str, exc: Exception) -> None:
    click.echo(f"Error: {source_name}: {_reason(exc)}", err=True)


def _sources(
    workspace: Workspace, texts: Sequence[str], on_error: Callable[[str, Exception], None]
) -> list[Source]:
    """Every SOURCE argument expanded (S3 prefixes listed); no argument means the default
    bucket and prefix. A prefix that cannot be listed is reported and counts as a failure."""
    if texts and (workspace.options.bucket is not None or workspace.options.prefix is not None):
        raise click.UsageError("--bucket and --prefix name what to read when no SOURCE is given")
    try:
        targets: list[Source | Prefix] = [parse_source(text) for text in texts]
        if not targets:
            default = workspace.default_prefix()
            if default is None:
                raise click.UsageError("give at least one SOURCE (a file, -, or s3://BUCKET/KEY)")
            targets = [default]
    except SettingsError as exc:
        raise _fail_settings(exc) from None
    if sum(1 for t in targets if isinstance(t, Source) and t.path is None and not t.is_s3) > 1:
        raise click.UsageError("stdin (-) can be read only once")
    sources: list[Source] = []
    for target in targets:
        if isinstance(target, Source):
            sources.append(target)
            continue
        try:
            sources.extend(workspace.expand(target))
        except (SourceError, SettingsError) as exc:
            on_error(target.name, exc)
    return sources


def _progress(
    items: list[T], label: str, *, stdout_busy: bool
) -> AbstractContextManager[Iterable[T]]:
    """click's bar on stderr, only for a person watching a terminal and only when it does not
    fight with values streaming to that same terminal."""
    stderr = sys.stderr
    hidden = len(items) < 2 or not stderr.isatty() or (stdout_busy and sys.stdout.isatty())
    return click.progressbar(items, label=label, file=stderr, hidden=hidden)


# -- header records ---------------------------------------------------------------------------


def header_record(header: EnvelopeHeader, object_size: int) -> dict[str, Any]:
    """A header as shown by ``inspect --json`` and ``decode --meta``: no salts, no wrapped keys."""
    record: dict[str, Any] = {
        "sealed": True,
        "format_version": header.version,
        "suite": header.suite.name,
        "key": header.key,
        "kek_id": header.kek_id,
        "wrap_method": header.wrap_method.name.lower(),
        "payload_kind": header.payload_kind.name.lower(),
        "compression": header.compression.name.lower(),
        "payload_size": header.payload_size,
        "stored_size": max(object_size - header.header_size - TAG_SIZE, 0),
        "header_size": header.header_size,
        "object_size": object_size,
    }
    if header.compression is Compression.ZSTD_DICTIONARY:
        record["dictionary_id"] = header.dictionary_id
    return record


def _ratio(record: dict[str, Any]) -> str:
    if record["compression"] == "none" or not record["payload_size"]:
        return "uncompressed"
    percent = 100 * record["stored_size"] / record["payload_size"]
    return f"{record['compression']} {percent:.0f}%"


def _meta_lines(record: dict[str, Any]) -> list[str]:
    return [
        f"  sealed for  {record['key']}",
        f"  KEK         {record['kek_id']} ({record['wrap_method']} wrap)",
        f"  payload     {record['payload_kind']}, {record['payload_size']} bytes, stored "
        f"{record['stored_size']} bytes ({_ratio(record)}), header {record['header_size']} bytes",
    ]


# -- decode -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rendered:
    """A decoded value ready for output: bytes to write, and what kind of value it is."""

    data: bytes
    kind: Literal["json", "text", "bytes"]


_NOT_JSON = object()


def _parse_json(value: str | bytes) -> Any:
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _render(value: str | bytes, *, raw: bool) -> Rendered:
    """Celery's JSON pretty-printed; other text as is; bytes as is (``raw``: always as is)."""
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    parsed = _parse_json(value)
    if parsed is not _NOT_JSON:
        if raw:
            return Rendered(data, "json")
        pretty = json.dumps(parsed, indent=2, ensure_ascii=False) + "\n"
        return Rendered(pretty.encode("utf-8", "surrogatepass"), "json")
    return Rendered(data, "text" if isinstance(value, str) else "bytes")


def _json_value(value: str | bytes) -> dict[str, Any]:
    """The value inside a ``--json`` record: parsed JSON, text, or base64 for bytes."""
    parsed = _parse_json(value)
    if parsed is not _NOT_JSON:
        return {"value_type": "json", "value": parsed}
    if isinstance(value, str):
        return {"value_type": "text", "value": value}
    return {"value_type": "bytes", "value": base64.b64encode(value).decode("ascii")}


_SUFFIX = {"json": ".json", "text": ".txt", "bytes": ".bin"}


def _output_name(source: Source, kind: Literal["json", "text", "bytes"], taken: set[str]) -> str:
    """A file name for ``--out``: the source's base name plus a suffix, unique in this run."""
    if source.key is not None:
        base = source.key.rsplit("/", 1)[-1]
    elif source.path is not None:
        base = source.path.name
    else:
        base = "stdin"
    base = base or "object"
    name, n = f"{base}{_SUFFIX[kind]}", 1
    while name in taken:
        n += 1
        name = f"{base}-{n}{_SUFFIX[kind]}"
    taken.add(name)
    return name


def write_private(path: Path, data: bytes) -> None:
    """Write a decoded value readable by its owner only: it is the plaintext the bucket hides."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


@envelope.command(
    context_settings=CONTEXT_SETTINGS, short_help="Print the values sealed in files or objects."
)
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@click.option(
    "--keyring",
    "keyring_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Keyring file (default: the Celery app's keyring, or $CELERY_S3_ENVELOPE_KEYRING).",
)
@click.option("--raw", is_flag=True, help="Write the exact stored bytes, not pretty JSON.")
@click.option("--meta", is_flag=True, help="Also show the header: KEK id, sealed-for key, sizes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source (JSON Lines).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Write one file per source into DIR (mode 0600) instead of printing values.",
)
@s3_options
@click.pass_context
def decode(
    ctx: click.Context,
    sources: tuple[str, ...],
    keyring_path: Path | None,
    raw: bool,
    meta: bool,
    as_json: bool,
    out: Path | None,
    bucket: str | None,
    prefix: str | None,
    endpoint_url: str | None,
    region: str | None,
) -> None:
    """Print the value sealed in each SOURCE: a file, - (stdin) or s3://BUCKET/KEY.

    Works offline: a downloaded object file and the keyring are all it needs (no Celery app,
    no S3). A file is opened whatever its name (--meta shows the key it was sealed for); an
    s3:// object must have been sealed for the key it is read from. s3://BUCKET/PREFIX/ (with
    the trailing slash) decodes every object under it.

    A source that fails (wrong key, tampered, not an envelope) prints one `Error: SOURCE:
    reason` line on stderr, the others carry on, and the exit status is 1.

    \b
    Examples:
      celery-s3-envelope decode celery-task-meta-4b1f.bin --keyring keys.json
      aws s3 cp s3://results/celery-task-meta-4b1f - | celery-s3-envelope decode - --keyring k.json
      celery-s3-envelope decode --meta s3://results/celery-task-meta-4b1f --keyring keys.json
      celery-s3-envelope decode s3://results/celery/ --out decoded/ --keyring keys.json
    """
    if raw and as_json:
        raise click.UsageError("--raw and --json do not go together")
    workspace = _workspace(
        ctx, bucket=bucket, prefix=prefix, endpoint_url=endpoint_url, region=region
    )
    failures = 0

    def fail(name: str, exc: Exception) -> None:
        nonlocal failures
        failures += 1
        _report_failure(name, exc)
        if as_json:
            click.echo(json.dumps({"source": name, "error": _reason(exc)}))

    try:
        keyring = workspace.keyring(keyring_path)
    except SettingsError as exc:
        raise _fail_settings(exc) from None
    items = _sources(workspace, sources, fail)
    if raw and out is None and len(items) > 1:
        raise click.UsageError("--raw with several sources needs --out DIR")
    if out is not None:
        try:
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot create {out}: {exc.strerror or exc}") from None
    pipeline = Pipeline()
    taken: set[str] = set()
    many = len(items) > 1
    with _progress(items, "decoding", stdout_busy=True) as bar:
        for source in bar:
            try:
                data = workspace.read(source)
                with aws_errors("KMS"):  # a KMS KEK: KMS unreachable or refusing
                    value = pipeline.unseal(data, keyring=keyring, key=source.key)
                record = header_record(inspect_header(data), len(data))
                rendered = _render(value, raw=raw)
                if out is None and not raw and not as_json and rendered.kind == "bytes":
                    raise SourceError(
                        f"binary value of {len(rendered.data)} bytes: use --raw or --out DIR"
                    )
                written: Path | None = None
                if out is not None:
                    written = out / _output_name(source, rendered.kind, taken)
                    write_private(written, rendered.data)
            except (SourceError, EnvelopeError, SettingsError) as exc:
                fail(source.name, exc)
                continue
            except OSError as exc:  # --out could not be written
                fail(source.name, SourceError(f"cannot write output: {exc.strerror or exc}"))
                continue
            _emit_decoded(source, value, rendered, record, written, as_json, meta, raw, many)
    ctx.exit(1 if failures else 0)


def _emit_decoded(
    source: Source,
    value: str | bytes,
    rendered: Rendered,
    record: dict[str, Any],
    written: Path | None,
    as_json: bool,
    meta: bool,
    raw: bool,
    many: bool,
) -> None:
    if as_json:
        line: dict[str, Any] = {"source": source.name}
        if written is not None:
            line["path"] = str(written)
        else:
            line.update(_json_value(value))
        if meta:
            line["meta"] = record
        click.echo(json.dumps(line, ensure_ascii=False))
        return
    if raw and written is None:
        if meta:
            click.echo("\n".join([source.name, *_meta_lines(record)]), err=True)
        sys.stdout.flush()
        sys.stdout.buffer.write(rendered.data)
        sys.stdout.buffer.flush()
        return
    if written is not None:
        click.echo(f"{source.name} -> {written}")
    elif many:
        click.echo(f"==> {source.name} <==")
    if meta:
        click.echo("\n".join(_meta_lines(record)))
    if written is None:
        click.echo(rendered.data, nl=not rendered.data.endswith(b"\n"))  # bytes: as stored


# -- inspect ----------------------------------------------------------------------------------


@envelope.command(
    context_settings=CONTEXT_SETTINGS, short_help="Show envelope headers (no keyring needed)."
)
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source (JSON Lines).")
@s3_options
@click.pass_context
def inspect(
    ctx: click.Context,
    sources: tuple[str, ...],
    as_json: bool,
    bucket: str | None,
    prefix: str | None,
    endpoint_url: str | None,
    region: str | None,
) -> None:
    """Show each SOURCE's header without opening it: no keyring needed.

    SOURCE is a file, - (stdin), s3://BUCKET/KEY, or s3://BUCKET/PREFIX/ (every object under
    it, read with ranged GETs). With no SOURCE: the bucket and prefix from --bucket/--prefix
    or the Celery app. Any object that is not a sealed envelope, or whose header names another
    object key than the one it is stored under, is an error (exit status 1): an audit that
    nothing under a prefix is plaintext.

    \b
    Examples:
      celery-s3-envelope inspect celery-task-meta-4b1f.bin
      celery-s3-envelope inspect --json s3://results/celery/ | jq -r .kek_id | sort | uniq -c
      celery -A proj envelope inspect
    """
    workspace = _workspace(
        ctx, bucket=bucket, prefix=prefix, endpoint_url=endpoint_url, region=region
    )
    failures = sealed = 0
    records: list[tuple[Source, dict[str, Any]]] = []

    def fail(name: str, exc: Exception) -> None:
        nonlocal failures
        failures += 1
        _report_failure(name, exc)
        if as_json:
            click.echo(json.dumps({"source": name, "sealed": False, "error": _reason(exc)}))

    items = _sources(workspace, sources, fail)
    with _progress(items, "inspecting", stdout_busy=as_json) as bar:
        for source in bar:
            try:
                head, size = workspace.read_header(source)
                header = inspect_header(head)
                if source.key is not None and header.key != source.key:
                    raise IntegrityError(
                        f"sealed for object key {header.key!r}, stored under {source.key!r}: "
                        "decode will refuse it"
                    )
            except (SourceError, EnvelopeError, SettingsError) as exc:
                fail(source.name, exc)
                continue
            sealed += 1
            record = header_record(header, size)
            if as_json:
                click.echo(json.dumps({"source": source.name, **record}, ensure_ascii=False))
            else:
                records.append((source, record))
    if records:
        _print_table(records)
    if sealed + failures > 1 and not as_json:
        click.echo(f"{sealed} sealed, {failures} failed", err=True)
    ctx.exit(1 if failures else 0)


def _print_table(records: list[tuple[Source, dict[str, Any]]]) -> None:
    """One row per envelope; the source last so that long keys do not break the columns."""
    rows = [("KEK", "KIND", "ORIGINAL", "STORED", "COMPRESSION", "SOURCE")]
    for source, record in records:
        name = source.name
        if source.key is None:
            name += f"  (sealed for {record['key']})"
        rows.append(
            (
                record["kek_id"],
                record["payload_kind"],
                str(record["payload_size"]),
                str(record["stored_size"]),
                _ratio(record),
                name,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [
            row[i].rjust(widths[i]) if i in (2, 3) else row[i].ljust(widths[i]) for i in range(5)
        ]
        click.echo("  ".join([*cells, row[5]]))


envelope.add_command(keys)
envelope.add_command(demo)
envelope.add_command(rotate)
envelope.add_command(migrate)
envelope.add_command(scan)
envelope.add_command(lifecycle)


if __name__ == "__main__":  # python -m celery_s3_envelope.cli (what the demo runs)
    main()
