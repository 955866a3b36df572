"""``decode`` and ``inspect``: the values sealed in files or objects, and their headers.

Each source that fails prints one ``Error: SOURCE: reason`` line on stderr (never a traceback) and
the others carry on; the exit status is the highest the failures stand for (``status.Status``):
3 for plaintext, 1 for a damaged envelope, 2 for a missing file or an empty prefix, 4 when S3 or
KMS failed.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from ..envelope import TAG_SIZE, Compression, EnvelopeHeader
from ..errors import EnvelopeError, IntegrityError, NotAnEnvelope, SizeLimitExceeded
from ..kek import KeyEntry
from ..keyring import Keyring, KeySource
from ..messages import sealed_body
from ..ops.context import Context, SettingsError
from ..pipeline import Pipeline
from ..pipeline import inspect as inspect_header
from ..private_file import write_private
from ..tenants import TenantKeyStore, is_tenant_kek_id
from .options import CONTEXT_SETTINGS, context_of, keyring_option, s3_options, settings_errors
from .sources import Source, SourceError, aws_errors, read, read_header, sources_of
from .status import ConfigurationError, Status
from .tenants import tenant_keys_option
from .terminal import json_text, safe, safe_text

T = TypeVar("T")
HEADERS_ONLY = "headers only, not authenticated: decode or scan --verify opens each envelope"
Kind = Literal["json", "text", "bytes"]


def _reason(exc: Exception) -> str:
    """One line saying why a source failed; the core's messages never hold secrets."""
    if isinstance(exc, NotAnEnvelope):
        return "not an envelope (no envelope magic: plaintext or another format)"
    if isinstance(exc, IntegrityError):
        return f"integrity check failed: {exc}"
    if isinstance(exc, SizeLimitExceeded):
        return f"refused, too large: {exc}"
    return str(exc)


def status_of(exc: Exception) -> Status:
    """The exit status a failed source stands for (the table in ``status``)."""
    if isinstance(exc, NotAnEnvelope):
        return Status.PLAINTEXT
    if isinstance(exc, SourceError):
        return exc.status
    if isinstance(exc, SettingsError):
        return Status.USAGE
    return Status.DAMAGED


@dataclass
class Failures:
    """Counts failed sources and reports each: one ``Error:`` line on stderr, and with
    ``--json`` a record on stdout (``record`` holds its extra fields). ``status`` is the exit
    status they add up to: the highest."""

    as_json: bool
    record: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    status: Status = Status.OK

    def __call__(self, name: str, exc: Exception) -> None:
        self.count += 1
        self.status = max(self.status, status_of(exc))
        click.echo(f"Error: {safe(name)}: {safe(_reason(exc))}", err=True)
        if self.as_json:
            click.echo(json_text({"source": name, **self.record, "error": _reason(exc)}))


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
    return f"{record['compression']}, {percent:.0f}% of original"


def _meta_lines(record: dict[str, Any]) -> list[str]:
    return [
        f"  sealed for  {safe(record['key'])}",
        f"  KEK         {safe(record['kek_id'])} ({record['wrap_method']} wrap)",
        f"  payload     {record['payload_kind']}, {record['payload_size']} bytes, stored "
        f"{record['stored_size']} bytes ({_ratio(record)}), header {record['header_size']} bytes",
    ]


# -- decode -----------------------------------------------------------------------------------

_NOT_JSON = object()
_SUFFIX = {"json": ".json", "text": ".txt", "bytes": ".bin"}


def _parse_json(value: str | bytes) -> Any:
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


@dataclass(frozen=True, slots=True)
class Rendered:
    """A decoded value ready for output: bytes to write, and what kind of value it is."""

    data: bytes
    kind: Kind


def _render(value: str | bytes, *, raw: bool) -> Rendered:
    """Celery's JSON pretty-printed; other text as is; bytes as is (``raw``: always as is)."""
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    parsed = _parse_json(value)
    if parsed is not _NOT_JSON:
        if raw:
            return Rendered(data, "json")
        pretty = json_text(parsed, indent=2) + "\n"
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


@dataclass(frozen=True, slots=True)
class Decoded:
    """One source opened: its value, rendered, its header record, and the file written."""

    source: Source
    value: str | bytes
    rendered: Rendered
    record: dict[str, Any]
    written: Path | None


@dataclass
class Decoder:
    """``decode``'s output options, and the sources it has opened so far."""

    keyring: KeySource
    raw: bool = False
    meta: bool = False
    as_json: bool = False
    out: Path | None = None
    many: bool = False
    pipeline: Pipeline = field(default_factory=Pipeline)
    taken: set[str] = field(default_factory=set)
    """Output file names used so far in ``out``."""

    def open(self, context: Context, source: Source) -> Decoded:
        """Read, open and render one source; writes its file under ``--out``."""
        data = sealed_body(read(context, source))  # a broker's message file: its body
        with aws_errors("KMS"):  # a KMS KEK: KMS unreachable or refusing
            value = self.pipeline.unseal(data, keyring=self.keyring, key=source.key)
        record = header_record(inspect_header(data), len(data))
        rendered = _render(value, raw=self.raw)
        if self.out is None and not self.raw and not self.as_json and rendered.kind == "bytes":
            raise SourceError(f"binary value of {len(rendered.data)} bytes: use --raw or --out DIR")
        written: Path | None = None
        if self.out is not None:
            written = self.out / self._output_name(source, rendered.kind)
            try:
                write_private(written, rendered.data)
            except OSError as exc:
                raise SourceError(f"cannot write output: {exc.strerror or exc}") from None
        return Decoded(source, value, rendered, record, written)

    def _output_name(self, source: Source, kind: Kind) -> str:
        """A file name for ``--out``: the source's base name plus a suffix, unique in this run."""
        if source.key is not None:
            base = source.key.rsplit("/", 1)[-1]
        elif source.path is not None:
            base = source.path.name
        else:
            base = "stdin"
        base = base or "object"
        name, n = f"{base}{_SUFFIX[kind]}", 1
        while name in self.taken:
            n += 1
            name = f"{base}-{n}{_SUFFIX[kind]}"
        self.taken.add(name)
        return name

    def emit(self, decoded: Decoded) -> None:
        """Print one opened source as the options say."""
        name, record, written = decoded.source.name, decoded.record, decoded.written
        if self.as_json:
            line: dict[str, Any] = {"source": name}
            if written is not None:
                line["path"] = str(written)
            else:
                line.update(_json_value(decoded.value))
            if self.meta:
                line["meta"] = record
            click.echo(json_text(line))
            return
        data = decoded.rendered.data
        if self.raw and written is None:
            if self.meta:
                click.echo("\n".join([safe(name), *_meta_lines(record)]), err=True)
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        if written is not None:
            click.echo(f"{safe(name)} -> {safe(written)}")
        elif self.many:
            click.echo(f"==> {safe(name)} <==")
        if self.meta:  # on stderr: stdout stays the value alone (decode --meta FILE | jq)
            click.echo("\n".join(_meta_lines(record)), err=True)
        if written is None:
            if decoded.rendered.kind == "text":  # a text value may hold escape sequences too
                data = safe_text(data.decode("utf-8", "surrogateescape")).encode(
                    "utf-8", "surrogateescape"
                )
            click.echo(data, nl=not data.endswith(b"\n"))  # bytes: as stored


@click.command(
    context_settings=CONTEXT_SETTINGS, short_help="Print the values sealed in files or objects."
)
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@keyring_option
@tenant_keys_option
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
    /,
    sources: tuple[str, ...],
    keyring_path: Path | None,
    tenant_keys: str | None,
    raw: bool,
    meta: bool,
    as_json: bool,
    out: Path | None,
    **options: str | None,
) -> None:
    """Print the value sealed in each SOURCE: a file, - (stdin) or s3://BUCKET/KEY.

    Works offline: a downloaded object file and the keyring are all it needs (no Celery app,
    no S3). A file is opened whatever its name (--meta shows the key it was sealed for); an
    s3:// object must have been sealed for the key it is read from. s3://BUCKET/PREFIX/ (with
    the trailing slash) decodes every object under it.

    A sealed task message (the envelope serializer) opens the same way: its raw body, or the
    message as kombu's transports keep it (JSON with the body in base64, e.g. a file of the
    filesystem transport or a dead-letter queue dump); it prints [args, kwargs, options].

    A value sealed under a tenant's KEK (docs/tenants.md) also needs the tenant key store:
    --tenant-keys DIR (a copy of it in files), or --tenant-keys bucket with --bucket/--prefix;
    run as `celery -A proj envelope decode`, the app's key store is used.

    A source that fails (wrong key, tampered, not an envelope) prints one `Error: SOURCE:
    reason` line on stderr, the others carry on, and the exit status is 1.

    \b
    Examples:
      celery-s3-envelope decode celery-task-meta-4b1f.bin --keyring keys.json
      aws s3 cp s3://results/celery-task-meta-4b1f - | celery-s3-envelope decode - --keyring k.json
      celery-s3-envelope decode --meta s3://results/celery-task-meta-4b1f --keyring keys.json
      celery-s3-envelope decode s3://results/celery/ --out decoded/ --keyring keys.json
      celery-s3-envelope decode --meta dlq/1733100000_5f1c.celery.msg --keyring keys.json
    """
    if raw and as_json:
        raise click.UsageError("--raw and --json do not go together")
    context = context_of(ctx, options)
    fail = Failures(as_json)
    with settings_errors():
        keyring = context.keyring(keyring_path)
        keys = _TenantKeysOnDemand(context, keyring, tenant_keys)
    items = sources_of(context, sources, fail)
    if raw and out is None and len(items) > 1:
        raise click.UsageError("--raw with several sources needs --out DIR")
    if out is not None:
        try:
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {out}: {exc.strerror or exc}") from None
    decoder = Decoder(keys, raw=raw, meta=meta, as_json=as_json, out=out, many=len(items) > 1)
    with _progress(items, "decoding", stdout_busy=True) as bar:
        for source in bar:
            try:
                decoded = decoder.open(context, source)
            except (SourceError, EnvelopeError, SettingsError) as exc:
                fail(source.name, exc)
                continue
            decoder.emit(decoded)
    ctx.exit(fail.status)


class _TenantKeysOnDemand:
    """``KeySource``: the keyring's KEKs, and tenant KEKs from the tenant key store
    (``--tenant-keys``, else the Celery app's), opened when the first tenant KEK id is met: a
    decode without tenants reads nothing more."""

    def __init__(self, context: Context, keyring: Keyring, location: str | None) -> None:
        self.context = context
        self.keyring = keyring
        self.location = location
        self._store: TenantKeyStore | None = None

    @property
    def active(self) -> KeyEntry:
        return self.keyring.active

    def for_unwrap(self, kek_id: str) -> KeyEntry:
        if not is_tenant_kek_id(kek_id):
            return self.keyring.for_unwrap(kek_id)
        if self._store is None:
            context = self.context
            if self.location is None and (context.app is None or context.options.bucket):
                raise SettingsError(
                    f"KEK {kek_id!r} is a tenant's KEK: pass --tenant-keys DIR (a copy of the "
                    "tenant key store) or --tenant-keys bucket with --bucket (docs/tenants.md)"
                )
            from ..ops.tenants import tenant_store

            self._store = tenant_store(
                context, context.default_prefix(), self.keyring, self.location
            )
        return self._store.get(kek_id)


# -- inspect ----------------------------------------------------------------------------------


@click.command(
    context_settings=CONTEXT_SETTINGS, short_help="Show envelope headers (no keyring needed)."
)
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source (JSON Lines).")
@s3_options
@click.pass_context
def inspect(
    ctx: click.Context, /, sources: tuple[str, ...], as_json: bool, **options: str | None
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
    context = context_of(ctx, options)
    fail = Failures(as_json, record={"sealed": False})
    sealed = 0
    records: list[tuple[Source, dict[str, Any]]] = []
    items = sources_of(context, sources, fail)
    with _progress(items, "inspecting", stdout_busy=as_json) as bar:
        for source in bar:
            try:
                head, size = read_header(context, source)
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
                click.echo(json_text({"source": source.name, **record, "authenticated": False}))
            else:
                records.append((source, record))
    if records:
        _print_table(records)
        click.echo(HEADERS_ONLY, err=True)
    if sealed + fail.count > 1 and not as_json:
        click.echo(f"{sealed} sealed, {fail.count} failed", err=True)
    ctx.exit(fail.status)


def _print_table(records: list[tuple[Source, dict[str, Any]]]) -> None:
    """One row per envelope; the source last so that long keys do not break the columns."""
    rows = [("KEK", "KIND", "ORIGINAL", "STORED", "COMPRESSION", "SOURCE")]
    for source, record in records:
        name = safe(source.name)
        if source.key is None:
            name += f"  (sealed for {safe(record['key'])})"
        rows.append(
            (
                safe(record["kek_id"]),
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
