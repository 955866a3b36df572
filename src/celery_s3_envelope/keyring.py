"""A keyring: a set of KEKs, loaded and saved, with exactly one active and the rest found by id.

A keyring is a small JSON document (``keys.example`` shows it)::

    {"version": 1, "keys": [{"id": "k1", "state": "active", "created": "...", "key": "<base64>"}]}

States: ``active`` (exactly one: seals new envelopes and opens old ones), ``decrypt`` (opens only)
and ``retired`` (kept for the record, refuses to open anything: the step before destroying it).
Each entry is a ``kek.LocalKey`` or a ``kms.KmsKey``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .envelope import WrapMethod
from .errors import KeyringError, RetiredKey, UnknownKey
from .kek import KEY_SIZE, KeyEntry, KeyState, LocalKey, format_time
from .kms import KmsKey, KmsProvider
from .private_file import write_private

KEYRING_VERSION = 1
DEFAULT_ENV_VAR = "CELERY_S3_ENVELOPE_KEYRING"
TENANT_KEK_PREFIX = "t/"
"""KEK ids starting with this name tenant KEKs (``tenants``): no keyring entry may use it."""


class KeySource(Protocol):
    """What the pipeline seals and opens with: a ``Keyring``, or ``tenants.TenantKeys``."""

    @property
    def active(self) -> KeyEntry: ...

    def for_unwrap(self, kek_id: str) -> KeyEntry: ...


class InsecureKeyringWarning(UserWarning):
    """A keyring file others can read, or a keyring holding the published example keys."""


def _parse_time(value: object, kek_id: str, field: str = "created") -> datetime:
    if not isinstance(value, str):
        raise KeyringError(f"key {kek_id!r}: {field!r} must be an ISO 8601 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise KeyringError(f"key {kek_id!r}: {field!r} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _entry_from_dict(raw: object) -> KeyEntry:
    if not isinstance(raw, Mapping):
        raise KeyringError("each keyring entry must be an object")
    kek_id = raw.get("id")
    if not isinstance(kek_id, str):
        raise KeyringError("a keyring entry has no string 'id'")
    try:
        state = KeyState(str(raw.get("state")))
    except ValueError:
        raise KeyringError(
            f"key {kek_id!r}: 'state' must be one of {', '.join(s.value for s in KeyState)}"
        ) from None
    created = _parse_time(raw.get("created"), kek_id)
    entry = _key_from_dict(raw, kek_id, state, created)
    if raw.get("active_from") is not None:
        entry = entry.scheduled(_parse_time(raw["active_from"], kek_id, "active_from"))
    return entry


def _key_from_dict(
    raw: Mapping[str, Any], kek_id: str, state: KeyState, created: datetime
) -> KeyEntry:
    if "key" in raw:
        material = raw["key"]
        if not isinstance(material, str):
            raise KeyringError(f"key {kek_id!r}: 'key' must be base64 text")
        try:
            decoded = base64.b64decode(material, validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"key {kek_id!r}: 'key' is not valid base64") from None
        return LocalKey(kek_id, decoded, state, created)
    if "kms_key_id" in raw:
        kms_key_id = raw["kms_key_id"]
        if not isinstance(kms_key_id, str):
            raise KeyringError(f"key {kek_id!r}: 'kms_key_id' must be a string")
        return KmsKey(kek_id, kms_key_id, state, created)
    raise KeyringError(f"key {kek_id!r}: no key material ('key') and no 'kms_key_id'")


class Keyring:
    """An immutable set of KEKs with exactly one active; edits return a new keyring.

    A ``decrypt`` key may be *staged* (``active_from``): it opens results at once, and becomes the
    sealing key at that moment in every process that loaded the keyring, so a rolling deploy
    never has one process sealing under a key another process lacks (docs/rotation.md)."""

    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self._entries: dict[str, KeyEntry] = {}
        for entry in entries:
            if entry.id in self._entries:
                raise KeyringError(f"duplicate key id {entry.id!r} in keyring")
            if entry.id.startswith(TENANT_KEK_PREFIX):
                raise KeyringError(
                    f"key id {entry.id!r}: ids starting with {TENANT_KEK_PREFIX!r} are reserved "
                    "for tenant KEKs (docs/tenants.md)"
                )
            self._entries[entry.id] = entry
        active = [e for e in self._entries.values() if e.state is KeyState.ACTIVE]
        if len(active) != 1:
            raise KeyringError(
                f"a keyring needs exactly one active key, this one has {len(active)}"
            )
        self._active = active[0]
        staged = [e for e in self._entries.values() if e.active_from is not None]
        for entry in staged:
            if entry.state is not KeyState.DECRYPT:
                raise KeyringError(f"key {entry.id!r}: only a 'decrypt' key can be staged")
        self._staged = sorted(
            ((entry.active_from.timestamp(), entry) for entry in staged if entry.active_from),
            key=lambda pair: pair[0],
        )
        if self.holds_example_keys:
            warnings.warn(
                "this keyring holds the published example keys from keys.example: "
                "they protect nothing; generate your own with `celery-s3-envelope keys generate`",
                InsecureKeyringWarning,
                stacklevel=2,
            )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def generate(cls, kek_id: str = "k1") -> Keyring:
        """A new keyring holding one fresh random active KEK."""
        return cls([LocalKey(kek_id, os.urandom(KEY_SIZE), KeyState.ACTIVE)])

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Keyring:
        if not isinstance(document, Mapping):
            raise KeyringError("a keyring must be a JSON object")
        version = document.get("version", KEYRING_VERSION)
        if version != KEYRING_VERSION:
            raise KeyringError(f"unsupported keyring version {version!r}")
        raw_entries = document.get("keys")
        if not isinstance(raw_entries, list) or not raw_entries:
            raise KeyringError("a keyring needs a non-empty 'keys' list")
        return cls(_entry_from_dict(raw) for raw in raw_entries)

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            # The position only: the text may hold key material.
            raise KeyringError(f"keyring is not valid JSON ({type(exc).__name__})") from None
        return cls.from_dict(document)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load a keyring file; warns when group or others may read it."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_bytes()
        except OSError as exc:
            # Never the path itself: a keyring value may hold key material by mistake.
            raise KeyringError(f"cannot read the keyring file: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(
                f"keyring file {str(path)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}",
                InsecureKeyringWarning,
                stacklevel=2,
            )
        return cls.from_json(text)

    @classmethod
    def from_text(cls, text: str) -> Keyring:
        """A keyring as ``envelope_keyring`` or ``$CELERY_S3_ENVELOPE_KEYRING`` gives it: the
        keyring's JSON when the text starts with ``{`` (after blanks), else a file's path."""
        if text.lstrip().startswith("{"):
            return cls.from_json(text)
        return cls.from_file(text)

    @classmethod
    def from_env(cls, variable: str = DEFAULT_ENV_VAR) -> Keyring:
        """Load a keyring from an environment variable holding its JSON or a file's path."""
        text = os.environ.get(variable)
        if not text:
            raise KeyringError(f"environment variable {variable} is not set")
        return cls.from_text(text)

    # -- saving -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The keyring document, key material included: handle it as a secret."""
        return {"version": KEYRING_VERSION, "keys": [e.to_dict() for e in self._entries.values()]}

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file, fsync, rename) with mode 0600."""
        data = (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8")
        write_private(Path(path), data)

    # -- lookup -------------------------------------------------------------------------------
    @property
    def active(self) -> KeyEntry:
        """The key that seals now: the latest staged key whose time has come, else the one in
        state ``active``."""
        if self._staged:
            now = time.time()
            for moment, entry in reversed(self._staged):
                if moment <= now:
                    return entry
        return self._active

    def settled(self) -> Keyring:
        """The same keyring with the key that seals now in state ``active`` and its stage
        cleared (what ``keys`` writes back after a staged key's time has come)."""
        current = self.active
        if current is self._active:
            return self
        return self.with_state(current.id, KeyState.ACTIVE)

    def get(self, kek_id: str) -> KeyEntry:
        """The entry named ``kek_id`` in any state; ``UnknownKey`` when absent."""
        try:
            return self._entries[kek_id]
        except KeyError:
            held = ", ".join(repr(held_id) for held_id in self._entries)
            raise UnknownKey(
                f"KEK {kek_id!r} is not in this keyring (it holds {held}): deploy the keyring "
                "that has it to this process and restart it (docs/rotation.md)",
                kek_id,
            ) from None

    def for_unwrap(self, kek_id: str) -> KeyEntry:
        """The entry that opens envelopes: absent -> ``UnknownKey``, retired -> ``RetiredKey``."""
        entry = self.get(kek_id)
        if entry.state is KeyState.RETIRED:
            raise RetiredKey(
                f"KEK {kek_id!r} is retired: results under it are no longer opened "
                "(set its state to 'decrypt' to read them, or rotate them first)",
                kek_id,
            )
        return entry

    # -- edits (new keyrings) -----------------------------------------------------------------
    def with_entry(self, entry: KeyEntry, *, activate: bool = False) -> Keyring:
        """A keyring with ``entry`` added; ``activate`` demotes the old active key to decrypt."""
        entries = list(self._entries.values())
        if activate:
            entries = [_demoted(e) for e in entries]
            entry = entry.with_state(KeyState.ACTIVE)
        return Keyring([*entries, entry])

    def with_state(self, kek_id: str, state: KeyState) -> Keyring:
        """A keyring with ``kek_id`` moved to ``state`` (activating demotes the old active key)."""
        target = self.get(kek_id)
        entries = list(self._entries.values())
        if state is KeyState.ACTIVE:
            entries = [_demoted(e) for e in entries]
        return Keyring(target.with_state(state) if e.id == kek_id else e for e in entries)

    def with_staged(self, kek_id: str, moment: datetime | None) -> Keyring:
        """A keyring with ``kek_id`` (a ``decrypt`` key) staged to seal from ``moment``."""
        target = self.get(kek_id)
        return Keyring(target.scheduled(moment) if e.id == kek_id else e for e in self)

    @property
    def holds_example_keys(self) -> bool:
        """True when a key is one of ``keys.example``'s published ones."""
        return any(isinstance(e, LocalKey) and e.is_example for e in self._entries.values())

    @property
    def uses_kms(self) -> bool:
        """True when any entry is an AWS KMS key (the backend then configures their client)."""
        return any(entry.method is WrapMethod.KMS for entry in self._entries.values())

    def with_kms(self, provider: KmsProvider) -> Keyring:
        """A keyring whose KMS entries call KMS through ``provider`` (endpoint, caches, scope)."""
        return Keyring(
            e.with_provider(provider) if isinstance(e, KmsKey) else e
            for e in self._entries.values()
        )

    def __iter__(self) -> Iterator[KeyEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kek_id: object) -> bool:
        return kek_id in self._entries

    def __repr__(self) -> str:
        keys = ", ".join(
            f"{e.id}:{e.state.value}" + (f"@{format_time(e.active_from)}" if e.active_from else "")
            for e in self._entries.values()
        )
        return f"Keyring(active={self.active.id!r}, keys=[{keys}])"


def _demoted(entry: KeyEntry) -> KeyEntry:
    """The old active key, now opening only; a staged key that did not become active stays
    staged."""
    return entry.with_state(KeyState.DECRYPT) if entry.state is KeyState.ACTIVE else entry
