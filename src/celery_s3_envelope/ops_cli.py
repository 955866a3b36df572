"""Bucket-wide commands: ``rotate``, ``migrate`` and ``scan`` (engines in rotation / audit).

Each lists the bucket and prefix given by the options (or the Celery app's ``s3_bucket`` and
``s3_base_path``), shows a progress line with its rate on a terminal, and prints a report (text,
or ``--json`` for scripts and audit evidence).

Exit status: ``rotate`` / ``migrate``: 0 when nothing failed, 1 otherwise; ``scan``: 2 when any
plaintext result was found (for cron / CI alerts), else 1 when an object could not be read or
``--verify`` saw a failure, else 0.
An interrupted run (Ctrl-C) prints what it did and the key to ``--resume-from``, and exits 130.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .cli_sources import Prefix, S3Options, SettingsError, Workspace, s3_options
from .keyring import Keyring
from .sweep import DEFAULT_WORKERS, SweepReport

if TYPE_CHECKING:
    from .distributed_cli import DistributedCall

KEYRING_OPTION = click.option(
    "--keyring",
    "keyring_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keyring file (default: the app's envelope_keyring, or $CELERY_S3_ENVELOPE_KEYRING).",
)
WORKERS_OPTION = click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Objects handled concurrently (threads).",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")


def distributed_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--distributed``, ``--shards``, ``--queue``, ``--resume``, ``--timeout`` (docs/scale.md)."""
    for option in reversed(
        (
            click.option(
                "--distributed",
                is_flag=True,
                help="Run as one Celery task per shard on the app's own workers.",
            ),
            click.option(
                "--shards",
                default=16,
                show_default=True,
                type=click.IntRange(1, 4096),
                help="Key ranges per Celery key prefix (--distributed).",
            ),
            click.option("--queue", metavar="QUEUE", help="Queue for the shard tasks."),
            click.option(
                "--resume",
                "resume_run",
                metavar="RUN_ID",
                help="Re-send the shards of this distributed run that did not finish.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(0, min_open=True),
                help="Stop waiting after SECONDS (the run goes on; --resume it later).",
            ),
        )
    ):
        command = option(command)
    return command


def _target(ctx: click.Context, options: dict[str, Any]) -> tuple[Workspace, Prefix]:
    workspace = Workspace.from_context(ctx, S3Options(**options))
    try:
        prefix = workspace.default_prefix()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    if prefix is None:
        raise click.UsageError("which bucket? pass --bucket (or run as `celery -A proj envelope`)")
    return workspace, prefix


def _writing_keyring(workspace: Workspace, target: Prefix, path: Path | None) -> Keyring:
    """The keyring that seals: KMS entries bound to the target's scope (``bucket/prefix``), as
    the backend binds them to ``bucket/base_path``, so key policies conditioned on the scope keep
    working for what rotate and migrate write."""
    try:
        keyring = workspace.keyring(path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    return _with_kms(workspace, target, keyring)


def _with_kms(workspace: Workspace, target: Prefix, keyring: Keyring) -> Keyring:
    """``keyring`` with its KMS entries calling KMS as the app's backend would: under
    ``celery -A proj envelope``, the app's ``envelope_kms_*`` settings (endpoint, region, cache
    bounds) and S3 credentials, through ``kms_provider_from_settings``; standalone, boto3's usual
    chain (``AWS_ENDPOINT_URL_KMS``, ``AWS_DEFAULT_REGION``, credentials) with ``--region``."""
    if not keyring.uses_kms:
        return keyring
    scope = f"{target.bucket}/{target.prefix}"
    if workspace.app is None:
        from .kms import KmsProvider

        return keyring.with_kms(KmsProvider(region=workspace.options.region, scope=scope))
    from celery.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

    from .backend import SCHEME, kms_provider_from_settings, resolve_settings

    conf = workspace.app.conf
    url = conf.get("result_backend")
    ours = isinstance(url, str) and url.startswith(f"{SCHEME}://")
    try:
        settings = resolve_settings(conf, url=url if ours else None)  # the URL overrides conf
        provider = kms_provider_from_settings(settings, scope)
    except ImproperlyConfigured as exc:
        raise click.ClickException(f"KMS settings: {exc}") from None
    return keyring.with_kms(provider)


class Progress:
    """``rotate: 1,234 objects, 456/s`` on stderr, redrawn at most 10 times a second."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.count = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, _result: object) -> None:
        self.count += 1
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            rate = self.count / max(now - self.started, 1e-9)
            click.echo(f"\r{self.label}: {self.count:,} objects, {rate:,.0f}/s", nl=False, err=True)

    def close(self) -> None:
        if self.enabled and self.count:
            click.echo(err=True)


def _run(label: str, as_json: bool, run: Callable[[Callable[[object], None]], Any]) -> Any:
    progress = Progress(label, enabled=not as_json)
    try:
        return run(progress)
    finally:
        progress.close()


def print_sweep(report: SweepReport, target: Prefix, as_json: bool) -> None:
    document = report.to_dict()
    if as_json:
        click.echo(json.dumps({"target": target.name, **document}, indent=2))
        return
    title = f"{report.operation} {target.name}"
    if report.target_kek:
        title += f" -> KEK {report.target_kek}"
    click.echo(title + (" (dry run: nothing written)" if report.dry_run else ""))
    click.echo(f"  {'scanned':<10} {document['scanned']:>10,}")
    for outcome in report.outcomes:
        line = f"  {outcome.value:<10} {document[outcome.value]:>10,}"
        if outcome.value in ("rewrapped", "sealed", "verified") and document["by_kek"]:
            line += "   (" + ", ".join(f"{k}: {n:,}" for k, n in document["by_kek"].items()) + ")"
        click.echo(line)
    click.echo(
        f"  elapsed {document['elapsed_seconds']:.1f} s, "
        f"{document['objects_per_second']:,.0f} objects/s; last key: {document['last_key']}"
    )
    for failure in document["failures"]:
        click.echo(f"Error: {failure['key']}: {failure['reason']}", err=True)


def _interrupted(report: SweepReport | None) -> None:
    last = report.last_key if report else None
    hint = f" resume with --resume-from {last!r}" if last else " nothing was done"
    click.echo(f"\ninterrupted:{hint}", err=True)


def _distributed_call(
    workspace: Workspace,
    target: Prefix,
    shards: int,
    queue: str | None,
    resume_run: str | None,
    timeout: float | None,
    as_json: bool,
) -> DistributedCall:
    from .distributed_cli import DistributedCall  # the Celery task module: only when used

    return DistributedCall(workspace, target, shards, queue, resume_run, timeout, as_json)


# -- rotate -----------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  celery-s3-envelope rotate --bucket my-results --prefix celery/ --keyring keys.json
  celery-s3-envelope rotate --bucket my-results --keyring keys.json --dry-run
  celery -A proj envelope rotate --verify --json
See docs/rotation.md for the whole runbook (add key, activate, deploy, rotate, retire)."""
)
@KEYRING_OPTION
@WORKERS_OPTION
@click.option("--dry-run", is_flag=True, help="Read and count; write nothing.")
@click.option("--limit", type=click.IntRange(0), help="Stop after this many objects.")
@click.option("--resume-from", metavar="KEY", help="Start after this key (a report's last key).")
@click.option("--verify", is_flag=True, help="Re-read and open every rewritten object.")
@click.option("--reencrypt", is_flag=True, help="Seal again under a fresh data key, not a rewrap.")
@distributed_options
@JSON_OPTION
@s3_options
@click.pass_context
def rotate(
    ctx: click.Context,
    /,
    keyring_path: Path | None,
    workers: int,
    dry_run: bool,
    limit: int | None,
    resume_from: str | None,
    verify: bool,
    reencrypt: bool,
    distributed: bool,
    shards: int,
    queue: str | None,
    resume_run: str | None,
    timeout: float | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Re-wrap every envelope under the prefix to the keyring's active KEK.

    Each object is written back only if nobody changed it since it was read (If-Match): a result
    a worker stored meanwhile is kept and counted as changed. Safe to interrupt and re-run."""
    from .rotation import Rotation

    workspace, target = _target(ctx, options)
    keyring = _writing_keyring(workspace, target, keyring_path)
    if distributed or resume_run:
        if limit is not None or resume_from is not None:
            raise click.UsageError("--limit and --resume-from are local; use --resume RUN_ID")
        run = _distributed_call(workspace, target, shards, queue, resume_run, timeout, as_json)
        flags = {"dry_run": dry_run, "verify": verify, "reencrypt": reencrypt}
        run("rotate", keyring, {"workers": workers, **flags})
        return
    rotation = Rotation(
        workspace.store(target.bucket),
        keyring,
        dry_run=dry_run,
        reencrypt=reencrypt,
        verify=verify,
        prefix=target.prefix,
        workers=workers,
        limit=limit,
        resume_from=resume_from,
    )
    _sweep_command(rotation, target, as_json)


def _sweep_command(sweep: Any, target: Prefix, as_json: bool) -> None:
    def run(progress: Callable[[object], None]) -> SweepReport:
        sweep.on_result = progress
        report: SweepReport = sweep.run()
        return report

    try:
        report = _run(sweep.report.operation, as_json, run)
    except KeyboardInterrupt:
        _interrupted(sweep.report)
        sys.exit(130)
    print_sweep(report, target, as_json)
    if not report.ok:
        sys.exit(1)


# -- migrate ----------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  celery-s3-envelope migrate --bucket my-results --prefix celery/ --keyring keys.json --dry-run
  celery -A proj envelope migrate
See docs/migration.md for switching from Celery's S3 backend with no downtime."""
)
@KEYRING_OPTION
@WORKERS_OPTION
@click.option("--dry-run", is_flag=True, help="Read and count; write nothing.")
@click.option("--limit", type=click.IntRange(0), help="Stop after this many objects.")
@click.option("--resume-from", metavar="KEY", help="Start after this key (a report's last key).")
@distributed_options
@JSON_OPTION
@s3_options
@click.pass_context
def migrate(
    ctx: click.Context,
    /,
    keyring_path: Path | None,
    workers: int,
    dry_run: bool,
    limit: int | None,
    resume_from: str | None,
    distributed: bool,
    shards: int,
    queue: str | None,
    resume_run: str | None,
    timeout: float | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Seal in place every plaintext result the stock S3 backend left under the prefix.

    Written with If-Match on the ETag read: a result a live worker stored meanwhile is kept."""
    from .audit import Migration

    workspace, target = _target(ctx, options)
    keyring = _writing_keyring(workspace, target, keyring_path)
    if distributed or resume_run:
        if limit is not None or resume_from is not None:
            raise click.UsageError("--limit and --resume-from are local; use --resume RUN_ID")
        run = _distributed_call(workspace, target, shards, queue, resume_run, timeout, as_json)
        run("migrate", keyring, {"workers": workers, "dry_run": dry_run})
        return
    migration = Migration(
        workspace.store(target.bucket),
        keyring,
        dry_run=dry_run,
        prefix=target.prefix,
        workers=workers,
        limit=limit,
        resume_from=resume_from,
    )
    _sweep_command(migration, target, as_json)


# -- scan -------------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  celery-s3-envelope scan --bucket my-results --prefix celery/
  celery-s3-envelope scan --bucket my-results --keyring keys.json --verify --json > evidence.json
  celery -A proj envelope scan || alert "plaintext results in the bucket"
Exit status 2 when any plaintext result is found."""
)
@KEYRING_OPTION
@WORKERS_OPTION
@click.option("--verify", is_flag=True, help="Also open every object with the keyring.")
@distributed_options
@JSON_OPTION
@s3_options
@click.pass_context
def scan(
    ctx: click.Context,
    /,
    keyring_path: Path | None,
    workers: int,
    verify: bool,
    distributed: bool,
    shards: int,
    queue: str | None,
    resume_run: str | None,
    timeout: float | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Report what the bucket holds, without keys: sealed (by KEK and format version),
    plaintext and foreign objects, sizes, oldest and newest per KEK.

    Reads only each object's header (a ranged GET); --verify opens every object in full."""
    from . import audit

    workspace, target = _target(ctx, options)
    if distributed or resume_run:
        if not verify and not resume_run:
            raise click.UsageError("--distributed runs `scan --verify` only")
        try:
            reader = workspace.keyring(keyring_path)
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from None
        run = _distributed_call(workspace, target, shards, queue, resume_run, timeout, as_json)
        run("verify", reader, {"workers": workers})
        return
    store = workspace.store(target.bucket)
    try:
        keyring = _with_kms(workspace, target, workspace.keyring(keyring_path)) if verify else None
        report = _run(
            "scan",
            as_json,
            lambda progress: audit.scan(
                store, prefix=target.prefix, workers=workers, on_result=progress
            ),
        )
        checked = (
            _run(
                "verify",
                as_json,
                lambda progress: audit.verify(
                    store, keyring, prefix=target.prefix, workers=workers, on_result=progress
                ),
            )
            if keyring is not None
            else None
        )
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    _print_scan(report, checked, target, as_json)
    if report.plaintext_found:
        sys.exit(2)
    if report.counts["unreadable"] or (checked is not None and not checked.ok):
        sys.exit(1)


def _print_scan(report: Any, checked: SweepReport | None, target: Prefix, as_json: bool) -> None:
    from .audit import failure_classes

    document = report.to_dict()
    if checked is not None:
        document["verify"] = {
            **checked.to_dict(),
            "failures_by_reason": dict(failure_classes(checked)),
        }
    if as_json:
        click.echo(json.dumps({"target": target.name, **document}, indent=2))
        return
    click.echo(f"scan {target.name}: {document['objects']:,} objects")
    for state in ("sealed", "plaintext", "foreign", "unreadable"):
        stored = document["stored_bytes"][state]
        click.echo(f"  {state:<10} {document[state]:>10,}   {stored:>14,} bytes stored")
    if document["sealed_by_kek"]:
        click.echo("  sealed by KEK:")
        click.echo(
            f"    {'kek':<16} {'ver':>3} {'objects':>10} {'stored':>14} {'original':>14}"
            "  oldest / newest"
        )
        for group in document["sealed_by_kek"]:
            click.echo(
                f"    {group['kek_id']:<16} {group['version']:>3} {group['objects']:>10,} "
                f"{group['stored_bytes']:>14,} {group['payload_bytes']:>14,}"
                f"  {group['oldest']} / {group['newest']}"
            )
    for key in document["plaintext_keys"]:
        click.echo(f"Plaintext: {key}", err=True)
    if checked is not None:
        verified = document["verify"]
        click.echo(
            f"  verified {verified['verified']:,} with the keyring, {verified['failed']:,} failed"
        )
        for failure in verified["failures"]:
            click.echo(f"Error: {failure['key']}: {failure['reason']}", err=True)


# -- lifecycle --------------------------------------------------------------------------------


@click.group()
def lifecycle() -> None:
    """Expire results with an S3 lifecycle rule instead of Celery's daily cleanup task."""


@lifecycle.command(
    epilog="""\b
Examples:
  celery -A proj envelope lifecycle apply --dry-run     # days from result_expires
  celery-s3-envelope lifecycle apply --bucket my-results --prefix celery/ --days 1
Then set envelope_expiry = "lifecycle" so Celery stops scheduling celery.backend_cleanup."""
)
@click.option(
    "--days",
    type=click.IntRange(1),
    help="Expire after N days (default: the app's result_expires, rounded up to whole days).",
)
@click.option(
    "--failure-days",
    type=click.IntRange(1),
    help="Expire failed results after N days "
    "(default: the app's result_failure_expires; needs the backend's expiry tags).",
)
@click.option("--dry-run", is_flag=True, help="Show the rules that would be written.")
@JSON_OPTION
@s3_options
@click.pass_context
def apply(
    ctx: click.Context,
    /,
    days: int | None,
    failure_days: int | None,
    dry_run: bool,
    as_json: bool,
    **options: str | None,
) -> None:
    """Install (or update) the expiry rule for the prefix, keeping every other rule.

    Idempotent: running it again with the same settings changes nothing."""
    from . import lifecycle as rules

    workspace, target = _target(ctx, options)
    conf = workspace.app.conf if workspace.app is not None else None
    if days is None and conf is not None and conf.result_expires:
        days = rules.whole_days(conf.result_expires)
    if failure_days is None and conf is not None and conf.get("result_failure_expires"):
        failure_days = rules.whole_days(conf.result_failure_expires)
    if days is None:
        raise click.UsageError("how many days? pass --days (or set the app's result_expires)")
    store = workspace.store(target.bucket)
    plan = rules.plan(store.lifecycle_rules(), rules.our_rules(target.prefix, days, failure_days))
    if plan.changes and not dry_run:
        store.put_lifecycle_rules(plan.merged)
    state = "unchanged" if not plan.changes else ("would change" if dry_run else "applied")
    if as_json:
        click.echo(
            json.dumps({"target": target.name, "state": state, "rules": plan.merged}, indent=2)
        )
        return
    click.echo(f"lifecycle {target.name}: {state}")
    for rule in plan.merged:
        marker = "*" if rules.is_ours(rule) else " "
        click.echo(f" {marker} {json.dumps(rule, sort_keys=True)}")
