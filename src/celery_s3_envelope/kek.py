"""One key-encryption key (KEK): its id, state and creation time, and how it wraps a DEK.

A local KEK never encrypts two DEKs under the same key: each DEK is wrapped with AES key wrap
(RFC 3394, nonce-free) under a wrapping key that HKDF-SHA256 derives from the KEK, the envelope's
salt and a digest of its sealed part. The wrap is therefore bound to the envelope it belongs to,
and no nonce budget limits how many results one KEK may protect (``docs/format.md``). The KMS KEK
(``kms``) derives its wrapping key the same way from an intermediate key.
"""

from __future__ import annotations

import base64
import hashlib
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .envelope import WrapMethod
from .errors import IntegrityError, KeyringError

_SHA256 = hashes.SHA256()  # stateless: one instance serves every derivation
KEY_SIZE = 32
WRAP_LABEL = b"celery-s3-envelope/v1/wrap\x00"
EXAMPLE_MARKER = b"EXAMPLE KEY"
"""Key material in ``keys.example`` starts with these bytes; loading it warns."""


class KeyState(StrEnum):
    ACTIVE = "active"
    DECRYPT = "decrypt"
    RETIRED = "retired"


class KeyEntry(ABC):
    """One KEK: an id, a state, a creation time, and a way to wrap and unwrap DEKs."""

    method: WrapMethod
    active_from: datetime | None = None
    """A ``decrypt`` key staged to become the sealing key at this moment (``Keyring.active``):
    every process that loaded the keyring switches then, none needs restarting."""

    def __init__(self, kek_id: str, state: KeyState, created: datetime) -> None:
        if not kek_id or len(kek_id.encode("utf-8")) > 255:
            raise KeyringError("a KEK id is 1 to 255 bytes of UTF-8")
        self.id = kek_id
        self.id_bytes = kek_id.encode("utf-8")
        self.state = state
        self.created = created

    @abstractmethod
    def wrap(self, dek: bytes, *, salt: bytes, associated_data: bytes) -> bytes:
        """The wrap body stored in the key slot for ``dek``, bound to the envelope."""

    @abstractmethod
    def unwrap(self, body: bytes, *, salt: bytes, associated_data: bytes) -> bytes:
        """The DEK from a wrap body; ``IntegrityError`` when it was not made for this envelope."""

    @abstractmethod
    def with_state(self, state: KeyState) -> KeyEntry:
        """A copy of this entry in another state."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The entry as stored in a keyring file (key material included)."""

    def scheduled(self, moment: datetime | None) -> KeyEntry:
        """A copy staged to become the sealing key at ``moment`` (None: not staged)."""
        entry = self.with_state(self.state)
        entry.active_from = moment
        return entry

    def describe(self) -> dict[str, str]:
        """What may be shown to a person: never key material."""
        described = {"id": self.id, "state": str(self.state), "created": format_time(self.created)}
        if self.active_from is not None:
            described["active_from"] = format_time(self.active_from)
        return described

    def __repr__(self) -> str:
        staged = f", active_from={format_time(self.active_from)!r}" if self.active_from else ""
        return f"{type(self).__name__}(id={self.id!r}, state={self.state.value!r}{staged})"


class LocalKey(KeyEntry):
    """A 32-byte AES key held in the keyring itself."""

    method = WrapMethod.LOCAL

    def __init__(
        self, kek_id: str, material: bytes, state: KeyState, created: datetime | None = None
    ) -> None:
        super().__init__(kek_id, state, created or datetime.now(UTC))
        if len(material) != KEY_SIZE:
            raise KeyringError(f"key {kek_id!r}: key material must be {KEY_SIZE} bytes")
        self._material = bytes(material)

    def _wrapping_key(self, salt: bytes, associated_data: bytes) -> bytes:
        return derive_wrapping_key(
            self._material, salt, self.method, self.id_bytes, associated_data
        )

    def wrap(self, dek: bytes, *, salt: bytes, associated_data: bytes) -> bytes:
        return aes_key_wrap(self._wrapping_key(salt, associated_data), dek)

    def unwrap(self, body: bytes, *, salt: bytes, associated_data: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._wrapping_key(salt, associated_data), body)
        except (InvalidUnwrap, ValueError):
            raise IntegrityError(
                f"wrapped data key does not open with KEK {self.id!r} for this envelope "
                "(key slot changed, spliced from another envelope, or wrong key material)"
            ) from None

    def with_state(self, state: KeyState) -> LocalKey:
        return LocalKey(self.id, self._material, state, self.created)

    def to_dict(self) -> dict[str, Any]:
        entry = self.describe()
        entry["key"] = base64.b64encode(self._material).decode("ascii")
        return entry

    @property
    def is_example(self) -> bool:
        return self._material.startswith(EXAMPLE_MARKER)


def derive_wrapping_key(
    secret: bytes, salt: bytes, method: WrapMethod, kek_id: bytes, associated_data: bytes
) -> bytes:
    """The per-envelope key that wraps one DEK (docs/format.md, "Key wrap")."""
    info = b"".join(
        (
            WRAP_LABEL,
            bytes((method, len(kek_id))),
            kek_id,
            hashlib.sha256(associated_data).digest(),
        )
    )
    return HKDF(_SHA256, KEY_SIZE, salt, info).derive(secret)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
