"""The exception tree.

Every failure to open an envelope is an :class:`EnvelopeError`, so callers (the backend, the CLI,
a fuzzer) catch one class. Messages name what failed (the object key, the KEK id, the field), never
key material or plaintext. ``error_code`` is the one reader of an AWS error's code.
"""

from __future__ import annotations


class EnvelopeError(Exception):
    """Root of every error raised while sealing or opening an envelope."""


class NotAnEnvelope(EnvelopeError):
    """The bytes do not start with the envelope magic (e.g. a plaintext legacy result)."""


class UnsupportedVersion(EnvelopeError):
    """The magic matches but the format version or a registered id is unknown to this release."""


class IntegrityError(EnvelopeError):
    """The envelope was changed, truncated, moved to another key, or spliced from others."""


class UnknownKey(EnvelopeError):
    """The envelope names a KEK id the keyring does not hold (or no longer allows to be used)."""

    def __init__(self, message: str, kek_id: str | None = None) -> None:
        super().__init__(message)
        self.kek_id = kek_id


class RetiredKey(UnknownKey):
    """The KEK exists in the keyring but is retired: nothing is opened or sealed with it."""


class ShreddedKey(UnknownKey):
    """The envelope names a tenant KEK that was shredded (``shred --tenant``): its results can
    never be opened again. Not damage: ``scan`` counts these apart."""


class InvalidTenantId(EnvelopeError):
    """A tenant id (from the tenant selector, an option or a key store) is not 1 to 64
    characters of ``[A-Za-z0-9._-]`` starting with a letter or digit; never quoted."""


class SizeLimitExceeded(EnvelopeError):
    """A payload is (or claims to be) larger than the configured maximum."""


class KeyringError(EnvelopeError):
    """A keyring is malformed or inconsistent (no active key, duplicate ids, bad key material)."""


class ShredIncomplete(KeyringError):
    """``shred`` could not delete every stored copy of a tenant's KEK records (the server
    refused some): the tenant is not shredded until a rerun deletes them."""

    def __init__(self, message: str, deleted: int, refused: int) -> None:
        super().__init__(message)
        self.deleted = deleted
        self.refused = refused


def error_code(exc: BaseException) -> str:
    """The error code AWS sent with a botocore ``ClientError`` (S3's or KMS's), '' for any
    other exception or none sent. Read from the response it carries, so that the key modules
    can judge KMS errors without importing botocore."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    error = response.get("Error")
    return str(error.get("Code") or "") if isinstance(error, dict) else ""


__all__ = [
    "EnvelopeError",
    "IntegrityError",
    "InvalidTenantId",
    "KeyringError",
    "NotAnEnvelope",
    "RetiredKey",
    "ShredIncomplete",
    "ShreddedKey",
    "SizeLimitExceeded",
    "UnknownKey",
    "UnsupportedVersion",
    "error_code",
]
