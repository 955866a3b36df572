"""Per-tenant KEKs: the tenant selector, the tenant key store, and the keys a seal uses.

Each tenant has its own KEKs, independent random 256-bit keys. Their KEK ids are
``t/<tenant>/<version>`` (``tenant_kek_id``): the reserved prefix ``t/`` never names a keyring
entry (``Keyring`` refuses it), the tenant id is 1 to 64 characters of ``[A-Za-z0-9._-]``
starting with a letter or digit, and the version is a decimal number; so the id fits the key
slot of format version 1 (at most 77 bytes of the 255).

The key store holds one record per tenant KEK, named ``<tenant>/<version>``, in the bucket under
a prefix of its own or in a directory. A record is JSON: the KEK wrapped (AES key wrap) by the
*root* KEK, the keyring's active KEK when the record was written (local or KMS), with a
per-record salt and the tenant KEK's id as the wrap's associated data: a record moved to another
tenant's name does not open. Records are written create-only, so two workers creating the same
tenant at once converge on one key. ``<tenant>/shredded`` is the tombstone ``shred`` leaves: a
tenant KEK that is gone reads as ``ShreddedKey``, never as damage.

Keys load lazily, on first use, into a bounded LRU cache whose entries live at most
``cache_seconds``: start-up reads nothing, memory does not grow with the number of tenants, and
a shred or a rotation reaches every process within ``cache_seconds`` (docs/tenants.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .envelope import SALT_SIZE, WrapMethod
from .errors import (
    EnvelopeError,
    IntegrityError,
    InvalidTenantId,
    KeyringError,
    ShreddedKey,
    ShredIncomplete,
    UnknownKey,
)
from .kek import KEY_SIZE, KeyEntry, KeyState, LocalKey, format_time
from .keyring import TENANT_KEK_PREFIX, Keyring
from .scrub import scrubbed

if TYPE_CHECKING:
    from .store import S3Store

logger = logging.getLogger(__name__)

__all__ = [
    "KEY_STORE_DIR",
    "DirectoryKeyObjects",
    "S3KeyObjects",
    "TenantKeyStore",
    "TenantKeys",
    "is_tenant_kek_id",
    "keys_for_request",
    "parse_tenant_kek_id",
    "tenant_kek_id",
    "validate_tenant_id",
]

MAX_TENANT_ID = 64
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_VERSION = re.compile(r"[1-9][0-9]{0,8}\Z")
RECORD_FORMAT = "celery-s3-envelope/tenant-key/v1"
TOMBSTONE_FORMAT = "celery-s3-envelope/tenant-shredded/v1"
ROOT_WRAP_LABEL = b"celery-s3-envelope/v1/tenant-key\x00"
TOMBSTONE = "shredded"
KEY_STORE_DIR = ".envelope-tenant-keys/"
"""The folder of a key store in a bucket: sweeps never touch an object under it, and ``scan``
lists it apart (``ops.sweep.is_key_store``)."""
DEFAULT_CACHE_SIZE = 1000
DEFAULT_CACHE_SECONDS = 300.0
MAX_RECORD_SIZE = 64 * 1024
MAX_KEK_ID = 255
"""A root KEK id a record may name (an envelope's key slot holds no longer id)."""


# -- tenant ids and tenant KEK ids ------------------------------------------------------------


def validate_tenant_id(tenant: object) -> str:
    """``tenant`` when it is a valid tenant id; ``InvalidTenantId`` otherwise. The message
    never quotes the value: it is untrusted (it may be huge or hold control characters)."""
    if not isinstance(tenant, str):
        raise InvalidTenantId(f"a tenant id must be a string, not {type(tenant).__name__}")
    if len(tenant) > MAX_TENANT_ID:
        raise InvalidTenantId(f"a tenant id is at most {MAX_TENANT_ID} characters")
    if not TENANT_ID.match(tenant):
        raise InvalidTenantId(
            "a tenant id is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or a digit"
        )
    return tenant


def tenant_kek_id(tenant: str, version: int) -> str:
    """The KEK id of ``tenant``'s KEK ``version``: ``t/<tenant>/<version>``."""
    if not 1 <= version <= 999_999_999:
        raise ValueError("a tenant KEK version is 1 to 999999999")
    return f"{TENANT_KEK_PREFIX}{validate_tenant_id(tenant)}/{version}"


def is_tenant_kek_id(kek_id: str) -> bool:
    """True for any id in the reserved tenant namespace (valid or not)."""
    return kek_id.startswith(TENANT_KEK_PREFIX)


def parse_tenant_kek_id(kek_id: str) -> tuple[str, int] | None:
    """(tenant, version) of a well-formed tenant KEK id; None for anything else (an id read from
    an envelope header is untrusted: only a well-formed one ever reaches the key store)."""
    if not is_tenant_kek_id(kek_id):
        return None
    tenant, slash, version = kek_id[len(TENANT_KEK_PREFIX) :].partition("/")
    if not slash or not TENANT_ID.match(tenant) or not _VERSION.match(version):
        return None
    return tenant, int(version)


def tenant_of_kek_id(kek_id: str) -> str | None:
    parsed = parse_tenant_kek_id(kek_id)
    return None if parsed is None else parsed[0]


# -- the selector -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a selector is given: the task's name, headers and keyword arguments. A Celery
    ``Request`` or ``Context`` is read through ``request_view``."""

    name: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


def request_view(request: Any) -> TaskRequest:
    """A ``TaskRequest`` from a Celery task ``Context`` / ``Request``, a message-like mapping
    (``{"task": ..., "headers": ..., "kwargs": ...}``), or None."""
    if request is None:
        return TaskRequest()
    if isinstance(request, TaskRequest):
        return request
    if isinstance(request, dict):
        headers = request.get("headers") or {}
        name = request.get("task") or request.get("name") or headers.get("task")
        return TaskRequest(
            name=name if isinstance(name, str) else None,
            headers=dict(headers) if isinstance(headers, dict) else {},
            kwargs=dict(request.get("kwargs") or {}),
            id=request.get("id") or headers.get("id"),
        )
    name = getattr(request, "task", None) or getattr(request, "name", None)
    headers = getattr(request, "headers", None)
    kwargs = getattr(request, "kwargs", None)
    task_id = getattr(request, "id", None)
    return TaskRequest(
        name=name if isinstance(name, str) else None,
        headers=dict(headers) if isinstance(headers, dict) else {},
        kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
        id=task_id if isinstance(task_id, str) else None,
    )


Selector = Callable[[TaskRequest], "str | None"]


def load_selector(spec: object) -> Selector:
    """``envelope_tenant_selector``: a callable, or ``"module:callable"`` naming one."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError("envelope_tenant_selector must be 'module:callable' or a callable")
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"envelope_tenant_selector {spec!r} does not name a callable")
    return found  # type: ignore[no-any-return]


# -- records ----------------------------------------------------------------------------------


def _root_context(kek_id: str) -> bytes:
    """The root wrap's associated data: the tenant KEK's id (a record opens under no other)."""
    return ROOT_WRAP_LABEL + kek_id.encode("utf-8")


@scrubbed
def _wrap_record(
    kek_id: str, material: bytes, root: KeyEntry, created: datetime, salt: bytes | None = None
) -> bytes:
    """A key record; ``salt`` is random unless given (the test vectors fix it)."""
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    body = root.wrap(material, salt=salt, associated_data=_root_context(kek_id))
    record = {
        "format": RECORD_FORMAT,
        "kek_id": kek_id,
        "created": format_time(created),
        "root_kek_id": root.id,
        "root_method": root.method.name.lower(),
        "salt": base64.b64encode(salt).decode("ascii"),
        "wrapped": base64.b64encode(body).decode("ascii"),
    }
    return json.dumps(record, sort_keys=True).encode("utf-8")


@dataclass(frozen=True, slots=True)
class _Record:
    kek_id: str
    created: datetime
    root_kek_id: str
    root_method: WrapMethod
    salt: bytes
    wrapped: bytes


def _parse_record(data: bytes, kek_id: str) -> _Record:
    if len(data) > MAX_RECORD_SIZE:
        raise KeyringError(
            f"tenant key record of {kek_id!r} is larger than {MAX_RECORD_SIZE} bytes"
        )
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != RECORD_FORMAT:
            raise ValueError
        created = datetime.fromisoformat(str(raw["created"]).replace("Z", "+00:00"))
        record = _Record(
            kek_id=str(raw["kek_id"]),
            created=created if created.tzinfo else created.replace(tzinfo=UTC),
            root_kek_id=_bounded_id(raw["root_kek_id"]),
            root_method=WrapMethod[str(raw["root_method"]).upper()],
            salt=base64.b64decode(str(raw["salt"]), validate=True),
            wrapped=base64.b64decode(str(raw["wrapped"]), validate=True),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise KeyringError(f"tenant key record of {kek_id!r} is malformed") from None
    return record


def _bounded_id(value: object) -> str:
    """A KEK id read from a record: a string of at most ``MAX_KEK_ID`` characters (it is quoted
    in errors), else ``ValueError`` (the record is malformed)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEK_ID:
        raise ValueError
    return value


@scrubbed
def _unwrap_record(
    data: bytes, kek_id: str, keyring: Keyring, state: KeyState = KeyState.DECRYPT
) -> LocalKey:
    record = _parse_record(data, kek_id)
    root = keyring.for_unwrap(record.root_kek_id)
    if root.method is not record.root_method:
        raise KeyringError(f"tenant key record of {kek_id!r}: root wrap method mismatch")
    # Unwrapped for the id it was asked for, whatever the record says: a record copied onto
    # another tenant's name fails here (IntegrityError) even with its "kek_id" field edited.
    try:
        material = root.unwrap(
            record.wrapped, salt=record.salt, associated_data=_root_context(kek_id)
        )
    except IntegrityError:
        raise IntegrityError(
            f"the key store's record of {kek_id!r} does not open with root KEK "
            f"{record.root_kek_id!r} as that key (moved from another tenant's name, or changed)"
        ) from None
    if len(material) != KEY_SIZE or record.kek_id != kek_id:
        raise KeyringError(f"tenant key record of {kek_id!r} names another key")
    return LocalKey(kek_id, material, state, record.created)


# -- where records live -----------------------------------------------------------------------


class KeyObjects(Protocol):
    """A flat namespace of small records (``<tenant>/<version>``, ``<tenant>/shredded``)."""

    location: str

    def read(self, name: str) -> tuple[bytes, str] | None:
        """The record and a version tag for ``replace``; None when absent."""

    def create(self, name: str, data: bytes) -> bool:
        """Write only if absent; False when it exists already (someone else won)."""

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        """Write over the version ``tag``; False when it changed meanwhile."""

    def put(self, name: str, data: bytes) -> None:
        """Write unconditionally (tombstones)."""

    def names(self, under: str = "") -> Iterator[str]:
        """Every record name starting with ``under``, in order."""

    def destroy(self, under: str, keep: str) -> tuple[int, int]:
        """Delete every record under ``under`` but ``keep``, with every stored version of each
        (noncurrent versions and delete markers on a versioned bucket); how many were deleted,
        and how many the server refused."""

    def holds_copies(self, under: str) -> bool:
        """Anything stored under ``under``, noncurrent versions included (what ``destroy``
        would delete)."""


class S3KeyObjects:
    """Records as objects under ``prefix`` in a bucket, through an ``S3Store``."""

    def __init__(self, store: S3Store, prefix: str) -> None:
        if not prefix.endswith(KEY_STORE_DIR):
            raise ValueError(f"a key store prefix ends with {KEY_STORE_DIR!r}")
        self.store = store
        self.prefix = prefix
        self.location = f"s3://{store.bucket}/{prefix}"

    def read(self, name: str) -> tuple[bytes, str] | None:
        return self.store.get_with_etag(self.prefix + name)

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        from .store import is_write_conflict

        try:
            self.store.put(self.prefix + name, data, if_none_match=True)
        except ClientError as exc:
            if is_write_conflict(exc):
                return False
            raise
        return True

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        from botocore.exceptions import ClientError

        from .store import is_missing_key, is_write_conflict

        try:
            self.store.put(self.prefix + name, data, if_match=tag)
        except ClientError as exc:
            if is_write_conflict(exc) or is_missing_key(exc):
                return False
            raise
        return True

    def put(self, name: str, data: bytes) -> None:
        self.store.put(self.prefix + name, data)

    def names(self, under: str = "") -> Iterator[str]:
        for info in self.store.list(self.prefix + under):
            yield info.key[len(self.prefix) :]

    def destroy(self, under: str, keep: str) -> tuple[int, int]:
        kept = self.prefix + keep
        return self.store.destroy_versions(self.prefix + under, keep=kept)

    def holds_copies(self, under: str) -> bool:
        return self.store.holds_versions(self.prefix + under)


class DirectoryKeyObjects:
    """Records as files in a directory (mode 0700, files 0600), ``<tenant>/<version>.json``.
    Create-only by ``link``; one host, so ``replace`` is compare-then-rename under a lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        self.location = str(self.root)
        self._lock = threading.Lock()

    @contextmanager
    def _os_errors(self) -> Iterator[None]:
        """An ``OSError`` (not a directory, no permission, a full disk) as one ``KeyringError``
        naming the store, never a traceback from deep in the file system."""
        try:
            yield
        except OSError as exc:
            raise KeyringError(
                f"tenant key store {self.location!r}: {exc.strerror or type(exc).__name__}"
            ) from None

    def _path(self, name: str) -> Path:
        tenant, _, leaf = name.partition("/")
        validate_tenant_id(tenant)
        if not (leaf == TOMBSTONE or _VERSION.match(leaf)):
            raise ValueError("not a record name")
        return self.root / tenant / f"{leaf}.json"

    def read(self, name: str) -> tuple[bytes, str] | None:
        with self._os_errors():
            try:
                data = self._path(name).read_bytes()
            except FileNotFoundError:
                return None
            return data, hashlib.sha256(data).hexdigest()

    def _temporary(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)  # no stray copy of a key record (a full disk)
            raise
        return temporary

    def create(self, name: str, data: bytes) -> bool:
        with self._os_errors():
            target = self._path(name)
            temporary = self._temporary(target, data)
            try:
                os.link(temporary, target)
            except FileExistsError:
                return False
            finally:
                temporary.unlink()
            return True

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        with self._os_errors(), self._lock:
            current = self.read(name)
            if current is None or current[1] != tag:
                return False
            target = self._path(name)
            os.replace(self._temporary(target, data), target)
            return True

    def put(self, name: str, data: bytes) -> None:
        with self._os_errors():
            target = self._path(name)
            os.replace(self._temporary(target, data), target)

    def names(self, under: str = "") -> Iterator[str]:
        with self._os_errors():
            if not self.root.is_dir():
                return
            # One tenant's records (``<tenant>/...``, a tenant's first use) read that tenant's
            # folder only: the cost of a first use does not grow with the number of tenants.
            tenant, slash, _ = under.partition("/")
            if slash and not TENANT_ID.match(tenant):
                return
            folders = [self.root / tenant] if slash else sorted(self.root.iterdir())
            for folder in folders:
                if not folder.is_dir() or not TENANT_ID.match(folder.name):
                    continue
                for file in sorted(folder.iterdir()):
                    if file.suffix == ".json" and not file.name.startswith("."):
                        name = f"{folder.name}/{file.stem}"
                        if name.startswith(under):
                            yield name

    def destroy(self, under: str, keep: str) -> tuple[int, int]:
        """Every file in the tenant's folder but ``keep``: records, and any copy beside them
        (a temporary file a killed writer left, an editor's backup), whatever its name."""
        with self._os_errors():
            tenant, slash, rest = under.partition("/")
            if not slash or rest:
                raise ValueError("destroy takes one tenant's folder, '<tenant>/'")
            folder = self.root / validate_tenant_id(tenant)
            kept = self._path(keep)
            deleted = 0
            if folder.is_dir():
                for entry in sorted(folder.iterdir()):
                    if entry != kept and not entry.is_dir():
                        entry.unlink(missing_ok=True)
                        deleted += 1
            return deleted, 0

    def holds_copies(self, under: str) -> bool:
        with self._os_errors():
            tenant, slash, _ = under.partition("/")
            folder = self.root / validate_tenant_id(tenant)
            return bool(slash) and folder.is_dir() and any(folder.iterdir())


# -- the key store ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantInfo:
    tenant: str
    versions: tuple[int, ...]
    shredded: bool

    @property
    def active_kek_id(self) -> str | None:
        return tenant_kek_id(self.tenant, max(self.versions)) if self.versions else None


@dataclass
class RootRewrap:
    """What ``rewrap_root`` did: records listed, read, rewritten, already current, changed."""

    listed: int = 0
    rewrapped: int = 0
    current: int = 0
    changed: int = 0
    failed: int = 0
    """Records that do not open (malformed, moved, under a root KEK this keyring lacks): each
    logged, the others rewrapped all the same."""


class TenantKeyStore:
    """Tenant KEKs: created on first use, wrapped under the keyring's active KEK (the root),
    loaded lazily into a bounded cache."""

    def __init__(
        self,
        objects: KeyObjects,
        keyring: Keyring,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_size < 1 or not 0 <= cache_seconds < math.inf:
            raise ValueError("the tenant key cache needs a size >= 1 and a finite age >= 0")
        self.objects = objects
        self.keyring = keyring
        self.cache_size = cache_size
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, tuple[float, LocalKey]] = OrderedDict()
        self._active: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return f"TenantKeyStore({self.objects.location!r}, cached={len(self._keys)})"

    @property
    def location(self) -> str:
        return self.objects.location

    # -- the cache (per process: a fork starts empty) -----------------------------------------
    def _fresh(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._keys = OrderedDict()
            self._active = OrderedDict()

    def _purge(self) -> None:
        """Drop expired entries, from both tables, at most once a second (called holding the
        lock): a key past its age leaves memory even if nobody asks for it again."""
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + 1.0
        for table in (self._keys, self._active):
            for name in [name for name, (expires, _) in table.items() if expires <= now]:
                del table[name]

    def _cached(self, table: OrderedDict[str, tuple[float, Any]], name: str) -> Any:
        self._fresh()
        with self._lock:
            self._purge()
            found = table.get(name)
            if found is None:
                return None
            if found[0] <= self._clock():
                del table[name]
                return None
            table.move_to_end(name)
            return found[1]

    def _remember(self, table: OrderedDict[str, tuple[float, Any]], name: str, value: Any) -> None:
        if self.cache_seconds == 0:
            return
        with self._lock:
            self._purge()
            table[name] = (self._clock() + self.cache_seconds, value)
            table.move_to_end(name)
            while len(table) > self.cache_size:
                table.popitem(last=False)

    def forget(self, tenant: str) -> None:
        """Drop ``tenant``'s keys from this process's cache."""
        self._fresh()
        prefix = f"{TENANT_KEK_PREFIX}{tenant}/"
        with self._lock:
            self._active.pop(tenant, None)
            for kek_id in [k for k in self._keys if k.startswith(prefix)]:
                del self._keys[kek_id]

    def cached(self) -> int:
        """How many tenant KEKs this process holds now (for the bounds' tests and benchmarks)."""
        return len(self._keys)

    # -- reading ------------------------------------------------------------------------------
    def _listed(self, tenant: str) -> tuple[list[int], bool]:
        """``tenant``'s KEK versions and whether it was shredded, from one listing."""
        versions, shredded = [], False
        for name in self.objects.names(f"{tenant}/"):
            leaf = name[len(tenant) + 1 :]
            if _VERSION.match(leaf):
                versions.append(int(leaf))
            shredded = shredded or leaf == TOMBSTONE
        return sorted(versions), shredded

    def _versions(self, tenant: str) -> list[int]:
        return self._listed(tenant)[0]

    def holds_copies(self, tenant: str) -> bool:
        """Whether anything of ``tenant`` is stored, noncurrent versions of deleted records
        included: a tenant whose records were deleted by hand can still be shredded."""
        return self.objects.holds_copies(f"{validate_tenant_id(tenant)}/")

    def is_shredded(self, tenant: str) -> bool:
        return self.objects.read(f"{validate_tenant_id(tenant)}/{TOMBSTONE}") is not None

    def _shredded(self, kek_id: str) -> ShreddedKey:
        return ShreddedKey(
            f"KEK {kek_id!r} was shredded: its tenant's results can no longer be opened "
            "(docs/tenants.md)",
            kek_id,
        )

    @scrubbed
    def get(self, kek_id: str) -> LocalKey:
        """The tenant KEK ``kek_id``: ``ShreddedKey`` when its tenant was shredded,
        ``UnknownKey`` when the store never held it (or the id is malformed)."""
        parsed = parse_tenant_kek_id(kek_id)
        if parsed is None:
            raise UnknownKey(f"KEK {kek_id!r} is not a well-formed tenant KEK id", kek_id)
        cached = self._cached(self._keys, kek_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        tenant, version = parsed
        found = self.objects.read(f"{tenant}/{version}")
        # The tombstone wins: a record that reappears after a shred (a restored backup, a
        # rewrap or a rotation racing the shred) is never used.
        if self.is_shredded(tenant):
            raise self._shredded(kek_id)
        if found is None:
            raise UnknownKey(
                f"KEK {kek_id!r} is not in the tenant key store at {self.location!r}", kek_id
            )
        entry = _unwrap_record(found[0], kek_id, self.keyring)
        self._remember(self._keys, kek_id, entry)
        return entry

    @scrubbed
    def active(self, tenant: str) -> LocalKey:
        """``tenant``'s sealing KEK (its highest version), created on first use."""
        validate_tenant_id(tenant)
        kek_id = self._cached(self._active, tenant)
        if kek_id is None:
            versions, shredded = self._listed(tenant)  # one request for a tenant's first use
            if shredded:
                raise self._shredded(tenant_kek_id(tenant, 1))
            kek_id = tenant_kek_id(tenant, versions[-1] if versions else 1)
            if not versions:
                self._create(tenant, 1)
            self._remember(self._active, tenant, kek_id)
        return self.get(kek_id)

    # -- writing ------------------------------------------------------------------------------
    @scrubbed
    def _create(self, tenant: str, version: int) -> bool:
        """Write version ``version`` of ``tenant``'s KEK create-only; False when another
        process wrote it first (its key is then the one everybody uses)."""
        kek_id = tenant_kek_id(tenant, version)
        material = os.urandom(KEY_SIZE)
        record = _wrap_record(kek_id, material, self.keyring.active, datetime.now(UTC))
        return self.objects.create(f"{tenant}/{version}", record)

    @scrubbed
    def new_version(self, tenant: str) -> str:
        """A new KEK for ``tenant`` (``rotate --tenant``): its id; every process seals under it
        within ``cache_seconds``."""
        validate_tenant_id(tenant)
        if self.is_shredded(tenant):
            raise self._shredded(tenant_kek_id(tenant, 1))
        while True:
            versions = self._versions(tenant)
            version = (versions[-1] if versions else 0) + 1
            if self._create(tenant, version):
                break
        self.forget(tenant)
        return tenant_kek_id(tenant, version)

    def shred(self, tenant: str) -> int:
        """Destroy every KEK of ``tenant``: a tombstone first (so readers say "shredded"),
        then each record with all its stored versions. Returns how many objects (or object
        versions) were deleted. Re-running finishes an interrupted shred."""
        validate_tenant_id(tenant)
        versions = self._versions(tenant)
        tombstone = {
            "format": TOMBSTONE_FORMAT,
            "tenant": tenant,
            "shredded": format_time(datetime.now(UTC)),
            "versions": versions,
        }
        name = f"{tenant}/{TOMBSTONE}"
        if self.objects.read(name) is None:
            self.objects.put(name, json.dumps(tombstone, sort_keys=True).encode("utf-8"))
        deleted, refused = self.objects.destroy(f"{tenant}/", keep=name)
        self.forget(tenant)
        if refused:
            raise ShredIncomplete(
                f"{refused} stored copies of tenant {tenant!r}'s key records could not be deleted "
                f"(the log names each; {deleted} were): the tenant is NOT shredded; remove the "
                "cause (Object Lock, a bucket policy) and run shred again",
                deleted,
                refused,
            )
        return deleted

    @scrubbed
    def rewrap_root(self, *, dry_run: bool = False) -> RootRewrap:
        """Rewrap every tenant KEK record not under the keyring's active KEK (root rotation):
        reads and writes only the key store's records, never a result."""
        report = RootRewrap()
        root = self.keyring.active
        for name in list(self.objects.names()):
            tenant, _, leaf = name.partition("/")
            if not _VERSION.match(leaf) or not TENANT_ID.match(tenant):
                continue
            report.listed += 1
            found = self.objects.read(name)
            if found is None:
                report.changed += 1
                continue
            kek_id = tenant_kek_id(tenant, int(leaf))
            try:
                if _parse_record(found[0], kek_id).root_kek_id == root.id:
                    report.current += 1
                    continue
                if dry_run:
                    _unwrap_record(found[0], kek_id, self.keyring)  # it would open
                    report.rewrapped += 1
                    continue
                entry = _unwrap_record(found[0], kek_id, self.keyring)
                record = _rewrapped(entry, root)
            except EnvelopeError as exc:
                logger.warning("tenant key record %s not rewrapped: %s", name, exc)
                report.failed += 1
                continue
            if self.objects.replace(name, record, found[1]):
                report.rewrapped += 1
            else:
                report.changed += 1
        return report

    def tenants(self) -> Iterator[TenantInfo]:
        """Every tenant the store knows (its KEK versions, whether shredded), in name order."""
        current: str | None = None
        versions: list[int] = []
        shredded = False
        for name in self.objects.names():
            tenant, _, leaf = name.partition("/")
            if not TENANT_ID.match(tenant):
                continue
            if tenant != current:
                if current is not None:
                    yield TenantInfo(current, tuple(sorted(versions)), shredded)
                current, versions, shredded = tenant, [], False
            if leaf == TOMBSTONE:
                shredded = True
            elif _VERSION.match(leaf):
                versions.append(int(leaf))
        if current is not None:
            yield TenantInfo(current, tuple(sorted(versions)), shredded)


@scrubbed
def _rewrapped(entry: LocalKey, root: KeyEntry) -> bytes:
    material = entry._material
    return _wrap_record(entry.id, material, root, entry.created)


# -- what a seal uses -------------------------------------------------------------------------


class TenantKeys:
    """The keys one seal uses: ``active`` is the tenant's KEK (the keyring's active KEK when
    ``tenant`` is None); ``for_unwrap`` opens any tenant's or the keyring's KEKs. The pipeline
    takes it wherever it takes a ``Keyring`` (``keyring.KeySource``)."""

    def __init__(self, store: TenantKeyStore | None, keyring: Keyring, tenant: str | None) -> None:
        if tenant is not None:
            validate_tenant_id(tenant)
            if store is None:
                raise KeyringError("a tenant was selected but no tenant key store is configured")
        self.store = store
        self.keyring = keyring
        self.tenant = tenant

    @property
    def active(self) -> KeyEntry:
        if self.tenant is None or self.store is None:
            return self.keyring.active
        return self.store.active(self.tenant)

    def for_unwrap(self, kek_id: str) -> KeyEntry:
        if is_tenant_kek_id(kek_id):
            if self.store is None:
                raise UnknownKey(
                    f"KEK {kek_id!r} is a tenant KEK and no tenant key store is configured "
                    "(envelope_tenant_keystore; docs/tenants.md)",
                    kek_id,
                )
            return self.store.get(kek_id)
        return self.keyring.for_unwrap(kek_id)

    def __repr__(self) -> str:
        return f"TenantKeys(tenant={self.tenant!r})"


def keys_for_request(
    request: Any,
    *,
    keyring: Keyring,
    store: TenantKeyStore | None,
    selector: Selector | None,
) -> TenantKeys:
    """The keys to seal with for a task ``request`` (a Celery ``Context`` / ``Request``, a
    message-like mapping, or None): the selector's tenant, or the keyring's active KEK when
    there is no selector, no request, or the selector returns None. A selector's answer is
    untrusted: anything but None or a valid tenant id raises ``InvalidTenantId``."""
    if selector is None or request is None:
        return TenantKeys(store, keyring, None)
    tenant = selector(request_view(request))
    if tenant is None:
        return TenantKeys(store, keyring, None)
    return TenantKeys(store, keyring, validate_tenant_id(tenant))
