"""Tenant operations without click: the key store a command uses, ``keys tenants``,
``rotate --tenant``, ``rotate --root``, ``shred --tenant`` (docs/tenants.md).

The key store is the Celery app's (``envelope_tenant_keystore``) under ``celery -A proj
envelope``; standalone, ``--tenant-keys``: ``bucket`` (``<prefix>.envelope-tenant-keys/`` in
the target bucket, the backend's default) or a directory. Its root is the keyring the command
was given (``--keyring``, else the app's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..keyring import Keyring
from ..tenants import (
    KEY_STORE_DIR,
    DirectoryKeyObjects,
    KeyObjects,
    S3KeyObjects,
    TenantKeys,
    TenantKeyStore,
    parse_tenant_kek_id,
    validate_tenant_id,
)
from .context import Context, Prefix, SettingsError
from .rotate import Rotation
from .scan import ScanReport, scan

BUCKET = "bucket"
SWEEP_CACHE_SECONDS = 60.0
"""How long ``rotate --tenant``'s sweep keeps the tenant's KEKs: a ``rotate --tenant`` racing
the sweep is taken up within it (the runbook's second run finishes any object it missed)."""


def key_objects(context: Context, target: Prefix | None, location: str | None) -> KeyObjects:
    """Where the tenant KEKs are: ``location`` (``bucket`` or a directory), else the app's
    ``envelope_tenant_keystore``, else the target bucket's default folder."""
    if location is None and context.app is not None and context.options.bucket is None:
        return context.backend().tenant_keys.objects
    if location is None or location == BUCKET:
        if target is None:
            raise SettingsError("the tenant key store is in a bucket: which one? pass --bucket")
        return S3KeyObjects(context.store(target.bucket), target.prefix + KEY_STORE_DIR)
    path = location[len("file:") :] if location.startswith("file:") else location
    import os

    if not os.path.isabs(path):
        raise SettingsError("--tenant-keys takes 'bucket' or a directory's absolute path")
    if not os.path.isdir(path):
        raise SettingsError(f"--tenant-keys: {path!r} is not a directory")
    return DirectoryKeyObjects(path)


def tenant_store(
    context: Context, target: Prefix | None, keyring: Keyring, location: str | None
) -> TenantKeyStore:
    """The key store a command reads and writes, rooted in ``keyring``; no cache across
    calls (a command must see what the store holds now)."""
    return TenantKeyStore(key_objects(context, target, location), keyring, cache_seconds=0)


def checked_tenant(tenant: str) -> str:
    """A tenant id from the command line, or ``SettingsError`` (one line, never quoting it)."""
    from ..errors import InvalidTenantId

    try:
        return validate_tenant_id(tenant)
    except InvalidTenantId as exc:
        raise SettingsError(f"--tenant: {exc}") from None


def only_tenant(tenant: str) -> Callable[[str], bool]:
    """What ``rotate --tenant T`` rewraps: results under one of T's KEKs, nothing else."""

    def select(kek_id: str) -> bool:
        parsed = parse_tenant_kek_id(kek_id)
        return parsed is not None and parsed[0] == tenant

    return select


def tenant_rotation(
    keys: TenantKeyStore, tenant: str, store: Any, *, new_key: bool = True, **options: Any
) -> tuple[str, Rotation]:
    """A new KEK for ``tenant`` (unless ``new_key`` is off: resume a run), and the sweep that
    rewraps the tenant's results under it; every other object is skipped."""
    kek_id = keys.new_version(tenant) if new_key else keys.active(tenant).id
    # The sweep's own cache: each of the tenant's KEKs is read once, not once per object.
    cached = TenantKeyStore(keys.objects, keys.keyring, cache_seconds=SWEEP_CACHE_SECONDS)
    source = TenantKeys(cached, keys.keyring, tenant)
    return kek_id, Rotation(store, source, select=only_tenant(tenant), **options)


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant: str
    versions: tuple[int, ...]
    shredded: bool
    results: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "kek_versions": list(self.versions),
            "active_kek": f"t/{self.tenant}/{max(self.versions)}" if self.versions else None,
            "shredded": self.shredded,
            "results": self.results,
        }


def tenant_rows(keys: TenantKeyStore, counted: ScanReport | None) -> list[TenantRow]:
    """Every tenant the key store knows, with its result count from ``counted`` (a header scan
    of the results; None: not counted). A tenant with results but no record in the store (a
    store lost or pointed elsewhere) is listed too, with no versions."""
    rows = []
    seen = set()
    for info in keys.tenants():
        seen.add(info.tenant)
        count = None if counted is None else counted.by_tenant.get(info.tenant, 0)
        rows.append(TenantRow(info.tenant, info.versions, info.shredded, count))
    if counted is not None:
        for tenant, count in counted.by_tenant.items():
            if tenant not in seen:
                rows.append(TenantRow(tenant, (), False, count))
    return sorted(rows, key=lambda row: row.tenant)


def count_results(store: Any, prefix: str, workers: int) -> ScanReport:
    """Results per tenant, from each object's header (a ranged GET each; no key needed)."""
    return scan(store, prefix=prefix, workers=workers)
