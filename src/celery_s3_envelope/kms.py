"""AWS KMS key-encryption keys, with bounded caches so sealing is not one KMS call per result.

Every envelope still gets its own fresh DEK. What KMS provides is an *intermediate key* (IK):
``GenerateDataKey`` returns it in plaintext and as a KMS ciphertext blob. The IK wraps DEKs
exactly as a local KEK does (HKDF per-object wrapping key, AES key wrap), and the blob travels in
the envelope's key slot, so a reader needs only KMS ``Decrypt`` (cached by blob) and the keyring
entry naming the KMS key. One IK is reused for at most ``cache_seconds`` and ``cache_uses``
wraps; either at 0 turns the cache off (one ``GenerateDataKey`` per result).

The encryption context sent to KMS, ``{"purpose", "kek_id", "scope"}``, is stored in the slot
(its ``scope`` part; the rest is fixed) and enforced by KMS on ``Decrypt``: the scope names the
bucket and prefix the results belong to, so key policies can grant decrypt per prefix
(``kms:EncryptionContext:scope``) and CloudTrail shows the scope a decrypt's key was wrapped for
(the writer's; not where the object was read: docs/security.md, item 8).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from .envelope import WrapMethod
from .errors import EnvelopeError, IntegrityError, KeyringError, error_code
from .kek import KeyEntry, KeyState, derive_wrapping_key

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

PURPOSE = "celery-s3-envelope/v1 intermediate key"
INTERMEDIATE_KEY_SIZE = 32
DEFAULT_CACHE_SECONDS = 300.0
DEFAULT_CACHE_USES = 10_000
DECRYPT_CACHE_ENTRIES = 1024
_LENGTH = struct.Struct(">H")
BOTOCORE_BODY_LOGGER = "botocore.parsers"


class _NoPlaintextKeyInLogs(logging.Filter):
    """botocore logs every response body at DEBUG (``botocore.parsers``); those of KMS's
    GenerateDataKey and Decrypt hold ``Plaintext``, the intermediate key. The record stays (it
    says a response came), its body does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(map(_holds_plaintext_key, args)):
            record.args = tuple(KMS_BODY_NOT_LOGGED if _holds_plaintext_key(a) else a for a in args)
        return True


def _holds_plaintext_key(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and b'"Plaintext"' in value


KMS_BODY_NOT_LOGGED = "<KMS response body holding a plaintext key: not logged>"
_LOG_FILTER = _NoPlaintextKeyInLogs()


def keep_keys_out_of_botocore_logs() -> None:
    """Install the filter on the logger botocore prints response bodies to; idempotent."""
    logger = logging.getLogger(BOTOCORE_BODY_LOGGER)
    if _LOG_FILTER not in logger.filters:
        logger.addFilter(_LOG_FILTER)


class KmsError(EnvelopeError):
    """KMS refused a call for a KEK (disabled key, wrong context, no permission...)."""

    def __init__(self, message: str, *, kek_id: str, code: str) -> None:
        super().__init__(message)
        self.kek_id = kek_id
        self.code = code


@dataclass(slots=True)
class _CachedKey:
    plaintext: bytes = field(repr=False)
    blob: bytes = field(repr=False)
    expires: float
    uses_left: int


class KmsProvider:
    """A fork-safe boto3 KMS client and the intermediate-key caches; share one per process."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        scope: str = "",
        profile: str | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        cache_uses: int = DEFAULT_CACHE_USES,
        clock: Callable[[], float] = time.monotonic,
        client_factory: Callable[[], KMSClient] | None = None,
    ) -> None:
        if cache_seconds < 0 or cache_uses < 0:
            raise ValueError("KMS cache age and uses must be >= 0")
        self.scope = scope
        self.cache_seconds = cache_seconds
        self.cache_uses = cache_uses
        self._clock = clock
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
        }
        self._client_factory = client_factory
        self._profile = profile
        self._client: KMSClient | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._generated: dict[tuple[str, str, str], _CachedKey] = {}
        self._decrypted: OrderedDict[tuple[str, str, str, bytes], tuple[bytes, float]] = (
            OrderedDict()
        )
        _providers.add(self)

    def _forget(self) -> None:
        """In a forked child: its own lock, no keys cached by the parent (each process draws its
        own intermediate keys, so ``cache_uses`` bounds wraps per key, not per key per child)."""
        self._lock = threading.Lock()
        self._generated.clear()
        self._decrypted.clear()
        self._client = None

    def __repr__(self) -> str:
        endpoint = self._client_args["endpoint_url"] or "default"
        return f"KmsProvider(endpoint={endpoint!r}, scope={self.scope!r})"

    @property
    def client(self) -> KMSClient:
        """The KMS client of this process (re-created after a fork)."""
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                keep_keys_out_of_botocore_logs()
                if self._client_factory is not None:
                    self._client = self._client_factory()
                else:
                    import boto3

                    args = {k: v for k, v in self._client_args.items() if v is not None}
                    session = boto3.session.Session(profile_name=self._profile)
                    self._client = session.client("kms", **args)
                self._pid = os.getpid()
            return self._client

    @staticmethod
    def context(kek_id: str, scope: str) -> dict[str, str]:
        return {"purpose": PURPOSE, "kek_id": kek_id, "scope": scope}

    def data_key(self, kek_id: str, kms_key_id: str, scope: str) -> tuple[bytes, bytes]:
        """An intermediate key (plaintext, KMS blob), from the cache while it is fresh."""
        cache_key = (kek_id, kms_key_id, scope)
        now = self._clock()
        caching = self.cache_seconds > 0 and self.cache_uses > 0
        if caching:
            with self._lock:
                cached = self._generated.get(cache_key)
                if cached is not None and cached.expires > now and cached.uses_left > 0:
                    cached.uses_left -= 1
                    return cached.plaintext, cached.blob
        response = self._call(
            kek_id,
            "GenerateDataKey",
            lambda: self.client.generate_data_key(
                KeyId=kms_key_id,
                NumberOfBytes=INTERMEDIATE_KEY_SIZE,
                EncryptionContext=self.context(kek_id, scope),
            ),
        )
        plaintext, blob = bytes(response["Plaintext"]), bytes(response["CiphertextBlob"])
        if caching:
            with self._lock:
                self._generated[cache_key] = _CachedKey(
                    plaintext, blob, now + self.cache_seconds, self.cache_uses - 1
                )
        return plaintext, blob

    def decrypt(self, kek_id: str, kms_key_id: str, scope: str, blob: bytes) -> bytes:
        """The intermediate key inside ``blob``; KMS enforces the encryption context."""
        now = self._clock()
        caching = self.cache_seconds > 0
        # Keyed by everything KMS checks, not the blob alone: a slot whose scope or KEK id was
        # changed must reach KMS (and fail its context check), even with this blob cached.
        cache_key = (kek_id, kms_key_id, scope, blob)
        if caching:
            with self._lock:
                hit = self._decrypted.get(cache_key)
                if hit is not None and hit[1] > now:
                    self._decrypted.move_to_end(cache_key)
                    return hit[0]
        response = self._call(
            kek_id,
            "Decrypt",
            lambda: self.client.decrypt(
                CiphertextBlob=blob, KeyId=kms_key_id, EncryptionContext=self.context(kek_id, scope)
            ),
        )
        plaintext = bytes(response["Plaintext"])
        if len(plaintext) != INTERMEDIATE_KEY_SIZE:
            raise IntegrityError(f"KMS returned a key of the wrong size for KEK {kek_id!r}")
        if caching:
            with self._lock:
                self._decrypted[cache_key] = (plaintext, now + self.cache_seconds)
                while len(self._decrypted) > DECRYPT_CACHE_ENTRIES:
                    self._decrypted.popitem(last=False)
        return plaintext

    @staticmethod
    def _call(kek_id: str, operation: str, call: Callable[[], Any]) -> Any:
        from botocore.exceptions import ClientError

        try:
            return call()
        except ClientError as exc:
            code = error_code(exc) or "Unknown"
            if code in ("ThrottlingException", "KMSInternalException", "InternalFailure"):
                raise  # transient: left to the caller's (Celery's) retry logic
            raise KmsError(
                f"KMS {operation} failed for KEK {kek_id!r}: {code}", kek_id=kek_id, code=code
            ) from None


_providers: weakref.WeakSet[KmsProvider] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for provider in list(_providers):
        provider._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)

_default_provider: KmsProvider | None = None
_default_lock = threading.Lock()


def default_provider() -> KmsProvider:
    """The provider used by KMS entries loaded without one (boto3's usual configuration)."""
    global _default_provider
    with _default_lock:
        if _default_provider is None:
            _default_provider = KmsProvider()
        return _default_provider


class KmsKey(KeyEntry):
    """A KEK held by AWS KMS: the keyring names it (``kms_key_id``), KMS keeps the material."""

    method = WrapMethod.KMS

    def __init__(
        self,
        kek_id: str,
        kms_key_id: str,
        state: KeyState,
        created: datetime | None = None,
        *,
        provider: KmsProvider | None = None,
    ) -> None:
        super().__init__(kek_id, state, created or datetime.now(UTC))
        if not kms_key_id:
            raise KeyringError(f"key {kek_id!r}: 'kms_key_id' is empty")
        self.kms_key_id = kms_key_id
        self._provider = provider

    @property
    def provider(self) -> KmsProvider:
        return self._provider or default_provider()

    def wrap(self, dek: bytes, *, salt: bytes, associated_data: bytes) -> bytes:
        scope = self.provider.scope
        intermediate, blob = self.provider.data_key(self.id, self.kms_key_id, scope)
        wrapping_key = derive_wrapping_key(
            intermediate, salt, self.method, self.id_bytes, associated_data
        )
        scope_bytes = scope.encode("utf-8")
        return b"".join(
            (
                _LENGTH.pack(len(scope_bytes)),
                scope_bytes,
                _LENGTH.pack(len(blob)),
                blob,
                aes_key_wrap(wrapping_key, dek),
            )
        )

    def unwrap(self, body: bytes, *, salt: bytes, associated_data: bytes) -> bytes:
        scope, blob, wrapped = parse_kms_body(body)
        intermediate = self.provider.decrypt(self.id, self.kms_key_id, scope, blob)
        wrapping_key = derive_wrapping_key(
            intermediate, salt, self.method, self.id_bytes, associated_data
        )
        try:
            return aes_key_unwrap(wrapping_key, wrapped)
        except (InvalidUnwrap, ValueError):
            raise IntegrityError(
                f"wrapped data key does not open with KMS KEK {self.id!r} for this envelope"
            ) from None

    def with_state(self, state: KeyState) -> KmsKey:
        return KmsKey(self.id, self.kms_key_id, state, self.created, provider=self._provider)

    def with_provider(self, provider: KmsProvider) -> KmsKey:
        entry = KmsKey(self.id, self.kms_key_id, self.state, self.created, provider=provider)
        entry.active_from = self.active_from
        return entry

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = self.describe()
        entry["kms_key_id"] = self.kms_key_id
        return entry

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "kms_key_id": self.kms_key_id}


def parse_kms_body(body: bytes) -> tuple[str, bytes, bytes]:
    """Split a KMS key slot body into (scope, KMS blob, AES-KW wrapped DEK)."""
    try:
        (scope_length,) = _LENGTH.unpack_from(body, 0)
        pos = _LENGTH.size + scope_length
        scope = body[_LENGTH.size : pos].decode("utf-8")
        (blob_length,) = _LENGTH.unpack_from(body, pos)
        pos += _LENGTH.size
        blob, wrapped = body[pos : pos + blob_length], body[pos + blob_length :]
    except (struct.error, UnicodeDecodeError):
        raise IntegrityError("KMS key slot is malformed") from None
    if len(blob) != blob_length or not blob or len(wrapped) != 40:
        raise IntegrityError("KMS key slot is malformed")
    return scope, blob, wrapped
