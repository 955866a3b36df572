"""Bucket-wide commands: ``rotate``, ``migrate``, ``scan`` and ``lifecycle apply``; their engines
are ``ops.rotate``, ``ops.migrate``, ``ops.scan`` and ``lifecycle``.

Each lists the bucket and prefix given by the options (or the Celery app's ``s3_bucket`` and
``s3_base_path``), shows a progress line with its rate on a terminal, and prints a report (text,
or ``--json`` for scripts and audit evidence).

Exit status (``status.Status``, the same table for every command): ``rotate`` / ``migrate`` 1
when an object failed (or was suspicious); ``scan`` 3 when any plaintext result was found (for
cron / CI alerts), else 1 when an object could not be read or ``--verify`` saw a failure; 2 when
the prefix holds no object at all; 4 when S3 failed; 130 when interrupted (the report says where
to resume).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..errors import EnvelopeError
from ..keyring import Keyring
from ..ops.context import Context, Prefix
from ..ops.sweep import Sweep, SweepReport, describe_error
from .distributed import Distributed, distributed_options
from .options import (
    Moment,
    json_option,
    keyring_option,
    s3_options,
    settings_errors,
    target_of,
    workers_option,
)
from .reports import interrupted, print_scan, print_sweep, with_progress
from .status import ConfigurationError, Status
from .tenants import find_tenant, no_such_tenant, tenant_keys_option
from .terminal import json_text, safe


def _sweep_command(sweep: Sweep[Any, SweepReport], target: Prefix, as_json: bool) -> None:
    def run(progress: Callable[[object], None]) -> SweepReport:
        sweep.on_result = progress
        return sweep.run()

    try:
        report: SweepReport = with_progress(sweep.report.operation, as_json, run)
    except KeyboardInterrupt:
        interrupted(sweep.report)
        sys.exit(Status.INTERRUPTED)
    print_sweep(report, target, as_json)
    if not report.ok:
        sys.exit(Status.DAMAGED)
    if not report.counts["scanned"] and sweep.resume_from is None and sweep.limit != 0:
        _nothing_under(target)


def _run_here_or_distributed(
    operation: str,
    context: Context,
    target: Prefix,
    keyring: Keyring,
    options: dict[str, Any],
    distributed: Distributed | None,
    as_json: bool,
    limit: int | None,
    resume_from: str | None,
) -> None:
    """The engine ``ops.runs.build_sweep`` gives ``operation``, here or on the app's workers."""
    if distributed is not None:
        distributed.run(context, target, operation, keyring, options, as_json=as_json)
        return
    from ..ops.runs import build_sweep  # the engines and botocore: only when a sweep runs

    sweep = build_sweep(
        operation,
        context.store(target.bucket),
        keyring,
        options,
        prefix=target.prefix,
        workers=int(options["workers"]),
        limit=limit,
        resume_from=resume_from,
    )
    _sweep_command(sweep, target, as_json)


def _nothing_under(target: Prefix) -> None:
    """A prefix that holds no object: most likely mistyped, never a silent success."""
    click.echo(f"Error: nothing under {safe(target.name)}: check the bucket and prefix", err=True)
    sys.exit(Status.USAGE)


# -- rotate -----------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  celery-s3-envelope rotate --bucket my-results --prefix celery/ --keyring keys.json
  celery-s3-envelope rotate --bucket my-results --keyring keys.json --dry-run
  celery -A proj envelope rotate --verify --json
See docs/rotation.md for the whole runbook (add key, activate, deploy, rotate, retire)."""
)
@keyring_option
@workers_option
@click.option("--dry-run", is_flag=True, help="Read and count; write nothing.")
@click.option("--limit", type=click.IntRange(0), help="Stop after this many objects.")
@click.option("--resume-from", metavar="KEY", help="Start after this key (a report's last key).")
@click.option("--verify", is_flag=True, help="Re-read and open every rewritten object.")
@click.option("--reencrypt", is_flag=True, help="Seal again under a fresh data key, not a rewrap.")
@click.option(
    "--tenant",
    metavar="TENANT",
    help="Give TENANT a new KEK, then rewrap TENANT's results (and only them) under it.",
)
@click.option(
    "--root",
    is_flag=True,
    help="Rewrap the tenant KEK records under the keyring's active KEK; no result is touched.",
)
@tenant_keys_option
@distributed_options
@json_option
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
    tenant: str | None,
    root: bool,
    tenant_keys: str | None,
    distributed: Distributed | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Re-wrap every envelope under the prefix to the keyring's active KEK.

    Each object is written back only if nobody changed it since it was read (If-Match): a result
    a worker stored meanwhile is kept and counted as changed. Safe to interrupt and re-run.
    Results under tenant KEKs are skipped: --tenant T rotates one tenant's, --root the tenant
    KEKs' own wrapping (docs/tenants.md)."""
    context, target = target_of(ctx, options)
    with settings_errors():
        keyring = context.keyring_for(target, keyring_path)
    if tenant is not None or root:
        _rotate_tenants(
            context,
            target,
            keyring,
            tenant,
            root,
            tenant_keys,
            distributed,
            as_json,
            dry_run=dry_run,
            verify=verify,
            reencrypt=reencrypt,
            workers=workers,
            limit=limit,
            resume_from=resume_from,
        )
        return
    run_options = {"workers": workers, "dry_run": dry_run, "verify": verify, "reencrypt": reencrypt}
    _run_here_or_distributed(
        "rotate", context, target, keyring, run_options, distributed, as_json, limit, resume_from
    )


def _rotate_tenants(
    context: Context,
    target: Prefix,
    keyring: Keyring,
    tenant: str | None,
    root: bool,
    location: str | None,
    distributed: Distributed | None,
    as_json: bool,
    **run: Any,
) -> None:
    """``rotate --tenant T`` (a new KEK for T, then T's results rewrapped under it) or
    ``rotate --root`` (the key store's records rewrapped under the active KEK)."""
    from ..ops import tenants as ops

    if tenant is not None and root:
        raise click.UsageError("--tenant and --root are separate runs: give one")
    if distributed is not None:
        raise click.UsageError("--tenant and --root run here, not --distributed")
    with settings_errors():
        keys = ops.tenant_store(context, target, keyring, location)
        name = ops.checked_tenant(tenant) if tenant is not None else None
    if name is None:
        try:
            done = keys.rewrap_root(dry_run=bool(run["dry_run"]))
        except EnvelopeError as exc:  # a record under a root KEK this keyring lacks
            raise ConfigurationError(f"tenant key store: {describe_error(exc)}") from None
        document = {"key_store": keys.location, "root_kek": keyring.active.id, **vars(done)}
        if as_json:
            click.echo(json_text(document, indent=2))
        else:
            verb = "would rewrap" if run["dry_run"] else "rewrapped"
            click.echo(
                f"rotate --root {safe(keys.location)} -> KEK {safe(keyring.active.id)}: "
                f"{done.listed:,} tenant KEKs, {verb} {done.rewrapped:,}, current "
                f"{done.current:,}, changed meanwhile {done.changed:,}, failed {done.failed:,}; "
                "no result touched"
            )
        if done.failed:
            click.echo(
                f"Error: {done.failed:,} tenant KEK records did not open (the log names each): "
                "they stay under their old root KEK; do not retire it",
                err=True,
            )
            sys.exit(Status.DAMAGED)
        return
    known = find_tenant(keys, name) or no_such_tenant(keys, name)
    if known.shredded:
        click.echo(f"Error: tenant {safe(name)} was shredded: it has no KEK to rotate", err=True)
        sys.exit(Status.USAGE)
    # A dry run or a resumed run adds no KEK: it shows, or finishes, the rewrap to the newest.
    new_key = not run["dry_run"] and run["resume_from"] is None
    try:
        _, sweep = _tenant_sweep(keys, name, context, target, new_key, run)
    except EnvelopeError as exc:  # the root KEK that wrapped the tenant's KEKs is missing
        raise ConfigurationError(f"tenant key store: {describe_error(exc)}") from None
    _sweep_command(sweep, target, as_json)


def _tenant_sweep(
    keys: Any, name: str, context: Context, target: Prefix, new_key: bool, run: dict[str, Any]
) -> tuple[str, Any]:
    from ..ops import tenants as ops

    return ops.tenant_rotation(
        keys,
        name,
        context.store(target.bucket),
        new_key=new_key,
        dry_run=bool(run["dry_run"]),
        reencrypt=bool(run["reencrypt"]),
        verify=bool(run["verify"]),
        prefix=target.prefix,
        workers=int(run["workers"]),
        limit=run["limit"],
        resume_from=run["resume_from"],
    )


# -- migrate ----------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  celery-s3-envelope migrate --bucket my-results --prefix celery/ --keyring keys.json \\
      --cutoff 2026-11-30T18:00:00Z --dry-run
  celery -A proj envelope migrate --cutoff now
See docs/migration.md for switching from Celery's S3 backend with no downtime."""
)
@keyring_option
@workers_option
@click.option(
    "--cutoff",
    type=Moment(),
    metavar="TIME",
    help="When the last worker with Celery's S3 backend stopped (ISO 8601, UTC unless given; "
    "'now'): only plaintext written before it is sealed, newer plaintext is reported.",
)
@click.option("--dry-run", is_flag=True, help="Read and count; write nothing.")
@click.option("--limit", type=click.IntRange(0), help="Stop after this many objects.")
@click.option("--resume-from", metavar="KEY", help="Start after this key (a report's last key).")
@distributed_options
@json_option
@s3_options
@click.pass_context
def migrate(
    ctx: click.Context,
    /,
    keyring_path: Path | None,
    workers: int,
    cutoff: datetime | None,
    dry_run: bool,
    limit: int | None,
    resume_from: str | None,
    distributed: Distributed | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Seal in place every plaintext result the stock S3 backend left under the prefix, if it
    was written before --cutoff; plaintext written later is reported as suspicious (exit 1).

    Written with If-Match on the ETag read: a result a live worker stored meanwhile is kept."""
    if cutoff is None:  # a resumed run too: its stored options are not trusted
        raise click.UsageError(
            "migrate needs --cutoff TIME: when the last worker with Celery's S3 backend stopped "
            "(plaintext written after it is not sealed; docs/migration.md)"
        )
    context, target = target_of(ctx, options)
    with settings_errors():
        keyring = context.keyring_for(target, keyring_path)
    run_options = {"workers": workers, "dry_run": dry_run, "cutoff": cutoff.isoformat()}
    _run_here_or_distributed(
        "migrate", context, target, keyring, run_options, distributed, as_json, limit, resume_from
    )


# -- scan -------------------------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  celery-s3-envelope scan --bucket my-results --prefix celery/
  celery-s3-envelope scan --bucket my-results --keyring keys.json --verify --json > evidence.json
  celery -A proj envelope scan; [ $? -eq 3 ] && alert "plaintext results in the bucket"
Exit status 3 when any plaintext result is found (the table: celery-s3-envelope --help)."""
)
@keyring_option
@workers_option
@click.option("--verify", is_flag=True, help="Also open every object with the keyring.")
@click.option(
    "--list-plaintext",
    is_flag=True,
    help="List every plaintext key the report keeps (the first 100), not just the first 10.",
)
@tenant_keys_option
@distributed_options
@json_option
@s3_options
@click.pass_context
def scan(
    ctx: click.Context,
    /,
    keyring_path: Path | None,
    workers: int,
    verify: bool,
    list_plaintext: bool,
    tenant_keys: str | None,
    distributed: Distributed | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Report what the bucket holds, without keys: sealed (by KEK and format version),
    plaintext and foreign objects, sizes, oldest and newest per KEK.

    Reads only each object's header (a ranged GET); --verify opens every object in full."""
    from ..ops import scan as audit

    context, target = target_of(ctx, options)
    if distributed is not None:
        if not verify and not distributed.resume_run:
            raise click.UsageError("--distributed runs `scan --verify` only")
        with settings_errors():
            reader = context.keyring(keyring_path)
        distributed.run(context, target, "verify", reader, {"workers": workers}, as_json=as_json)
        return
    from ..ops import tenants as tenant_ops
    from ..tenants import TenantKeys, TenantKeyStore

    store = context.store(target.bucket)
    try:
        with settings_errors():
            keyring = context.keyring_for(target, keyring_path) if verify else None
            objects = tenant_ops.key_objects(context, target, tenant_keys)
        readers = (
            None if keyring is None else TenantKeys(TenantKeyStore(objects, keyring), keyring, None)
        )
        report = with_progress(
            "scan",
            as_json,
            lambda progress: audit.scan(
                store, prefix=target.prefix, workers=workers, on_result=progress
            ),
        )
        checked = (
            with_progress(
                "verify",
                as_json,
                lambda progress: audit.verify(
                    store, readers, prefix=target.prefix, workers=workers, on_result=progress
                ),
            )
            if readers is not None
            else None
        )
        if report.by_tenant:  # which tenants were shredded: one tombstone lookup each
            report.mark_shredded(lambda tenant: objects.read(f"{tenant}/shredded") is not None)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(Status.INTERRUPTED)
    print_scan(report, checked, target, as_json, list_plaintext=list_plaintext)
    if report.plaintext_found:
        sys.exit(Status.PLAINTEXT)
    if report.counts["unreadable"] or (checked is not None and not checked.ok):
        sys.exit(Status.DAMAGED)
    if not report.counts["objects"]:
        _nothing_under(target)


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
@json_option
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
    from .. import lifecycle as rules

    context, target = target_of(ctx, options)
    conf = context.app.conf if context.app is not None else None
    if days is None and conf is not None and conf.result_expires:
        days = rules.whole_days(conf.result_expires)
    if failure_days is None and conf is not None and conf.get("result_failure_expires"):
        failure_days = rules.whole_days(conf.result_failure_expires)
    if days is None:
        raise click.UsageError("how many days? pass --days (or set the app's result_expires)")
    store = context.store(target.bucket)
    if failure_days is None:
        _refuse_expiring_key_store(context, target)
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


def _refuse_expiring_key_store(context: Context, target: Prefix) -> None:
    """One untagged rule expires everything under the prefix: the tenant key store there too
    (every tenant's KEKs, so every tenant's results). Refused when the store holds a record or
    the app seals under tenants; the tag-filtered rules (``--failure-days``) never match it."""
    from ..ops import tenants as tenant_ops
    from ..tenants import S3KeyObjects

    with settings_errors():
        objects = tenant_ops.key_objects(context, target, None)
    if (
        not isinstance(objects, S3KeyObjects)
        or objects.store.bucket != target.bucket
        or not objects.prefix.startswith(target.prefix)
    ):
        return
    selector = context.app is not None and bool(context.app.conf.get("envelope_tenant_selector"))
    if selector or next(objects.names(), None) is not None:
        raise ConfigurationError(
            f"the rule would expire the tenant key store {safe(objects.location)} with the "
            "results (every tenant's KEKs: docs/tenants.md): set result_failure_expires (its "
            "rules match only the results' expiry tags) or pass --failure-days, or keep the key "
            "store in a directory (envelope_tenant_keystore)"
        )
