"""celery-s3-envelope: Celery task results stored in S3 as sealed envelopes.

The public API: ``seal`` / ``unseal`` / ``inspect`` for single values, ``Keyring`` for KEKs, and
the error tree. The Celery backend lives in ``celery_s3_envelope.backend``.
"""

from __future__ import annotations

import threading

from .envelope import EnvelopeHeader
from .errors import (
    EnvelopeError,
    IntegrityError,
    KeyringError,
    NotAnEnvelope,
    RetiredKey,
    SizeLimitExceeded,
    UnknownKey,
    UnsupportedVersion,
)
from .kek import KeyEntry, KeyState, LocalKey
from .keyring import InsecureKeyringWarning, Keyring
from .pipeline import DEFAULT_COMPRESSION_LEVEL, DEFAULT_MAX_SIZE, Pipeline
from .pipeline import inspect as _inspect

__version__ = "0.1.0"

_pipelines: dict[tuple[int, int], Pipeline] = {}
_pipelines_lock = threading.Lock()


def _pipeline(compression_level: int, max_size: int) -> Pipeline:
    """One pipeline per (level, limit), so zstd contexts are reused across calls."""
    cache_key = (compression_level, max_size)
    pipeline = _pipelines.get(cache_key)
    if pipeline is None:
        with _pipelines_lock:
            pipeline = _pipelines.setdefault(
                cache_key, Pipeline(compression_level=compression_level, max_size=max_size)
            )
    return pipeline


def seal(
    value: str | bytes,
    *,
    key: str,
    keyring: Keyring,
    compression_level: int = DEFAULT_COMPRESSION_LEVEL,
) -> bytes:
    """Seal ``value`` for the S3 object ``key`` under ``keyring``'s active KEK."""
    return _pipeline(compression_level, DEFAULT_MAX_SIZE).seal(value, key=key, keyring=keyring)


def unseal(
    envelope: bytes,
    *,
    keyring: Keyring,
    key: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> str | bytes:
    """Open ``envelope``. ``key`` (the object key it was read from) must match the sealed one;
    ``None`` skips that check, for offline decode of a downloaded file."""
    return _pipeline(DEFAULT_COMPRESSION_LEVEL, max_size).unseal(envelope, keyring=keyring, key=key)


def inspect(envelope: bytes) -> EnvelopeHeader:
    """The envelope's header (KEK id, object key, sizes) without any key."""
    return _inspect(envelope)


__all__ = [
    "EnvelopeError",
    "EnvelopeHeader",
    "InsecureKeyringWarning",
    "IntegrityError",
    "KeyEntry",
    "KeyState",
    "Keyring",
    "KeyringError",
    "LocalKey",
    "NotAnEnvelope",
    "Pipeline",
    "RetiredKey",
    "SizeLimitExceeded",
    "UnknownKey",
    "UnsupportedVersion",
    "inspect",
    "seal",
    "unseal",
]
