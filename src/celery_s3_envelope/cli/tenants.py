"""Tenant commands: ``keys tenants`` and ``shred --tenant``; ``rotate --tenant`` and
``rotate --root`` are options of ``rotate`` (``bulk``). The work is in ``ops.tenants``.

Tenant ids are untrusted (they come from a selector fed by task arguments): every one shown
is escaped (``terminal.safe``), and one given on the command line is checked before use.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ..errors import ShredIncomplete
from ..ops.context import Context
from ..tenants import TenantInfo, TenantKeyStore
from .options import (
    CONTEXT_SETTINGS,
    json_option,
    keyring_option,
    s3_options,
    settings_errors,
    target_of,
    workers_option,
)
from .status import Status
from .terminal import json_text, safe

tenant_keys_option = click.option(
    "--tenant-keys",
    "tenant_keys",
    metavar="WHERE",
    help="The tenant key store: 'bucket' (<prefix>.envelope-tenant-keys/ in the bucket) or a "
    "directory's absolute path (default: the app's envelope_tenant_keystore, else 'bucket').",
)


def find_tenant(keys: TenantKeyStore, name: str) -> TenantInfo | None:
    """The key store's entry for tenant ``name``; None when it lists none."""
    return next((info for info in keys.tenants() if info.tenant == name), None)


def no_such_tenant(keys: TenantKeyStore, name: str) -> NoReturn:
    """Exit 2 with one line naming the tenant and where it was looked for."""
    click.echo(
        f"Error: no tenant {safe(name)} in the key store {safe(keys.location)}: "
        "check the name and --tenant-keys",
        err=True,
    )
    sys.exit(Status.USAGE)


@click.command(
    name="tenants",
    context_settings=CONTEXT_SETTINGS,
    epilog="""\b
Examples:
  celery -A proj envelope keys tenants
  celery-s3-envelope keys tenants --bucket my-results --prefix celery/ --keyring keys.json
  celery -A proj envelope keys tenants --no-count --json""",
)
@keyring_option
@tenant_keys_option
@workers_option
@click.option(
    "--no-count",
    is_flag=True,
    help="List the key store only; do not scan the results to count them per tenant.",
)
@json_option
@s3_options
@click.pass_context
def tenants(
    ctx: click.Context,
    /,
    keyring_path: Path | None,
    tenant_keys: str | None,
    workers: int,
    no_count: bool,
    as_json: bool,
    **options: str | None,
) -> None:
    """List the tenants: their KEK versions, whether shredded, and their results.

    Tenants and KEKs come from the key store (one listing, no key opened); result counts from a
    scan of the prefix that reads each object's header (a ranged GET each): --no-count skips
    it. A tenant with results but no key in the store is listed too."""
    from ..ops import tenants as ops

    context, target = target_of(ctx, options)
    with settings_errors():
        keyring = _keyring_or_none(context, keyring_path)
        keys = ops.tenant_store(context, target, keyring or _NO_ROOT, tenant_keys)
    counted = (
        None
        if no_count
        else ops.count_results(context.store(target.bucket), target.prefix, workers)
    )
    rows = ops.tenant_rows(keys, counted)
    if as_json:
        document = {
            "target": target.name,
            "key_store": keys.location,
            "tenants": [row.to_dict() for row in rows],
        }
        click.echo(json_text(document, indent=2))
        return
    click.echo(f"tenants of {safe(target.name)} (key store {safe(keys.location)}): {len(rows):,}")
    click.echo(f"  {'tenant':<24} {'active KEK':<32} {'versions':>8} {'results':>10}  state")
    for row in rows:
        active = row.to_dict()["active_kek"] or "-"
        results = "-" if row.results is None else f"{row.results:,}"
        state = "shredded" if row.shredded else ("no key" if not row.versions else "live")
        click.echo(
            f"  {safe(row.tenant):<24} {safe(active):<32} {len(row.versions):>8} "
            f"{results:>10}  {state}"
        )


class _NoRoot:
    """Listing needs no root KEK: a keyring stand-in that refuses to open anything."""

    @property
    def active(self) -> Any:
        raise click.UsageError("this command needs a keyring: pass --keyring PATH")

    def for_unwrap(self, kek_id: str) -> Any:
        return self.active


_NO_ROOT: Any = _NoRoot()


def _keyring_or_none(context: Context, path: Path | None) -> Any:
    from ..ops.context import SettingsError

    try:
        return context.keyring(path)
    except SettingsError:
        if path is not None:
            raise
        return None


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog="""\b
Examples:
  celery -A proj envelope shred --tenant acme --yes
  celery-s3-envelope shred --tenant acme --bucket my-results --prefix celery/ --yes
See docs/tenants.md for the erasure runbook (cache bound, versioned buckets, backups).""",
)
@click.option("--tenant", "tenant", required=True, metavar="TENANT", help="The tenant to shred.")
@click.option(
    "--yes",
    "confirmed",
    is_flag=True,
    help="Confirm: the tenant's results can never be read again.",
)
@tenant_keys_option
@json_option
@s3_options
@click.pass_context
def shred(
    ctx: click.Context,
    /,
    tenant: str,
    confirmed: bool,
    tenant_keys: str | None,
    as_json: bool,
    **options: str | None,
) -> None:
    """Destroy every KEK of TENANT, so that its results never open again (crypto-shredding).

    Writes a tombstone (readers then say "shredded", not "damaged"), then deletes each of the
    tenant's key records with every stored version of it (noncurrent versions on a versioned
    bucket too). Results are not touched. Processes that cached the tenant's keys keep them up
    to envelope_tenant_cache_seconds (docs/tenants.md)."""
    from ..ops import tenants as ops

    with settings_errors():
        name = ops.checked_tenant(tenant)
    if not confirmed:
        click.echo(
            f"Error: shredding makes every result of tenant {safe(name)!s} unreadable for ever: "
            "add --yes to confirm",
            err=True,
        )
        sys.exit(Status.USAGE)
    context, target = target_of(ctx, options)
    with settings_errors():
        keys = ops.tenant_store(context, target, _NO_ROOT, tenant_keys)
    known = find_tenant(keys, name)
    if known is None and keys.holds_copies(name):
        known = TenantInfo(name, (), False)  # records deleted by hand, versions left: shred them
    if known is None:
        no_such_tenant(keys, name)
    already = known.shredded and not known.versions
    try:
        deleted = keys.shred(name)
    except ShredIncomplete as exc:
        click.echo(f"Error: {safe(str(exc))}", err=True)
        sys.exit(Status.DAMAGED)
    document = {
        "tenant": name,
        "key_store": keys.location,
        "already_shredded": already,
        "deleted_objects": deleted,
        "kek_versions": list(known.versions),
    }
    if as_json:
        click.echo(json_text(document, indent=2))
        return
    if already:
        click.echo(f"tenant {safe(name)}: already shredded ({deleted} leftover objects deleted)")
        return
    click.echo(
        f"tenant {safe(name)}: shredded ({len(known.versions)} KEK versions; {deleted} objects "
        f"and object versions deleted from {safe(keys.location)})"
    )
