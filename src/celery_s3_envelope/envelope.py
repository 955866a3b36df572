"""The envelope's byte layout (format version 1): a header dataclass, ``pack`` and ``unpack``.

Pure bytes in, bytes out: no keys, no crypto, no Celery, no boto3. ``docs/format.md`` is the
normative description of every field below; this module and that page must agree (a test
re-derives a vector from the page's field list).

    preamble     magic(4) version(1) header_length(2)
    sealed part  suite(1) payload_kind(1) compression(1) [dictionary_id(4)]
                 payload_size(8) salt(16) commitment(32) key_length(2) key(K)
    key slot     wrap_method(1) kek_id_length(1) kek_id(I) wrap_body(rest of the header)
    payload      AES-256-GCM ciphertext and 16-byte tag

The payload's associated data is ``magic || version || sealed part``: everything that never
changes after sealing. ``header_length`` and the key slot are left out so that rotation can
rewrite the slot (whose length may change) without touching the payload ciphertext.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TypeVar

from .errors import IntegrityError, NotAnEnvelope, UnsupportedVersion

MAGIC = b"\xe5CSE"
"""0xE5 followed by ASCII: never valid UTF-8, so never the start of a JSON result."""

VERSION = 1
PREAMBLE_SIZE = 7  # magic(4) + version(1) + header_length(2)
MAX_HEADER_SIZE = 0xFFFF
SALT_SIZE = 16
COMMITMENT_SIZE = 32
TAG_SIZE = 16

_PREAMBLE = struct.Struct(">4sBH")
_SEALED_HEAD = struct.Struct(">BBB")  # suite, payload_kind, compression
_DICTIONARY_ID = struct.Struct(">I")
_SEALED_TAIL = struct.Struct(
    f">Q{SALT_SIZE}s{COMMITMENT_SIZE}sH"
)  # size, salt, commitment, key_len
_SLOT_HEAD = struct.Struct(">BB")  # wrap_method, kek_id_length
LOCAL_WRAP_BODY_SIZE = 40  # AES-KW (RFC 3394) output for a 32-byte DEK


class Suite(IntEnum):
    """Content encryption suite: how the DEK becomes a content key, nonce and commitment."""

    AES256GCM_HKDF_SHA256_COMMIT = 1


class PayloadKind(IntEnum):
    """What the caller sealed, so ``unseal`` returns the same type."""

    TEXT = 1  # str, stored as UTF-8 (surrogates passed through)
    BYTES = 2


class Compression(IntEnum):
    """How the plaintext was compressed before encryption."""

    NONE = 0
    ZSTD = 1
    ZSTD_DICTIONARY = 2  # named by format v1 (dictionary_id follows); not yet produced


class WrapMethod(IntEnum):
    """How the DEK is wrapped in the key slot."""

    LOCAL = 1  # HKDF-SHA256 per-object wrapping key from a local KEK, then AES key wrap
    KMS = 2  # reserved for AWS KMS key-encryption keys


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """Everything an envelope says about itself; readable without any key."""

    version: int
    suite: Suite
    payload_kind: PayloadKind
    compression: Compression
    dictionary_id: int
    payload_size: int
    """Length of the plaintext before compression."""
    salt: bytes
    commitment: bytes
    key: str
    """The full S3 object key the envelope was sealed for."""
    wrap_method: WrapMethod
    kek_id: str
    wrap_body: bytes
    """The wrap method's own bytes (for a local KEK: the AES-KW wrapped DEK)."""
    header_size: int = 0
    """Bytes before the payload; filled in by ``unpack`` and ``pack``."""

    def __repr__(self) -> str:  # no salts or wrapped keys in logs: they are noise, not secrets
        return (
            f"EnvelopeHeader(version={self.version}, kek_id={self.kek_id!r}, key={self.key!r}, "
            f"payload_kind={self.payload_kind.name}, compression={self.compression.name}, "
            f"payload_size={self.payload_size}, header_size={self.header_size})"
        )

    def with_slot(
        self, *, wrap_method: WrapMethod, kek_id: str, wrap_body: bytes
    ) -> EnvelopeHeader:
        """The same sealed part under another key slot (what rotation writes)."""
        return replace(self, wrap_method=wrap_method, kek_id=kek_id, wrap_body=wrap_body)


@dataclass(frozen=True, slots=True)
class Unpacked:
    """An envelope split into its parts, none of them verified yet."""

    header: EnvelopeHeader
    associated_data: bytes
    ciphertext: memoryview
    """The payload (ciphertext and tag), a view into the caller's buffer: not copied."""


def _sealed_part(h: EnvelopeHeader) -> bytes:
    key = h.key.encode("utf-8")
    if len(h.salt) != SALT_SIZE or len(h.commitment) != COMMITMENT_SIZE:
        raise ValueError("salt and commitment must be 16 and 32 bytes")
    if h.compression is Compression.ZSTD_DICTIONARY:
        dictionary = _DICTIONARY_ID.pack(h.dictionary_id)
    elif h.dictionary_id:
        raise ValueError("a dictionary id needs compression ZSTD_DICTIONARY")
    else:
        dictionary = b""
    return b"".join(
        (
            _SEALED_HEAD.pack(h.suite, h.payload_kind, h.compression),
            dictionary,
            _SEALED_TAIL.pack(h.payload_size, h.salt, h.commitment, len(key)),
            key,
        )
    )


def associated_data(header: EnvelopeHeader) -> bytes:
    """The payload's AEAD associated data: magic, version and the sealed part."""
    return MAGIC + bytes((header.version,)) + _sealed_part(header)


def pack(header: EnvelopeHeader, ciphertext: bytes) -> bytes:
    """Serialize ``header`` and append ``ciphertext`` (GCM output, tag included)."""
    if header.version != VERSION:
        raise ValueError(f"this release writes format version {VERSION} only")
    kek_id = header.kek_id.encode("utf-8")
    if not 1 <= len(kek_id) <= 255:
        raise ValueError("a KEK id is 1 to 255 bytes of UTF-8")
    sealed = _sealed_part(header)
    slot = _SLOT_HEAD.pack(header.wrap_method, len(kek_id)) + kek_id + header.wrap_body
    header_length = PREAMBLE_SIZE + len(sealed) + len(slot)
    if header_length > MAX_HEADER_SIZE:
        raise ValueError("envelope header too long (object key or wrap body too large)")
    preamble = _PREAMBLE.pack(MAGIC, header.version, header_length)
    return b"".join((preamble, sealed, slot, ciphertext))


def header_length(prefix: bytes) -> int:
    """Total header size from an envelope's first 7 bytes (enough for a ranged GET to plan)."""
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise NotAnEnvelope("not an envelope (magic bytes missing)")
    if len(prefix) < PREAMBLE_SIZE:
        raise IntegrityError("envelope truncated inside its preamble")
    _, version, length = _PREAMBLE.unpack_from(prefix)
    if version != VERSION:
        raise UnsupportedVersion(f"unsupported envelope format version {version}")
    return int(length)


_E = TypeVar("_E", bound=IntEnum)


def _enum(kind: type[_E], value: int, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise UnsupportedVersion(f"unknown {what} id {value} in envelope header") from None


def unpack(data: bytes, *, header_only: bool = False) -> Unpacked:
    """Split an envelope into header, associated data and ciphertext, checking every length.

    ``header_only`` accepts a prefix that ends after the header (a ranged GET); the returned
    ciphertext is then whatever followed the header in ``data``.
    """
    view = memoryview(data)
    total = header_length(data[:PREAMBLE_SIZE])
    if total > len(data):
        raise IntegrityError("envelope truncated inside its header")
    if total < PREAMBLE_SIZE + _SEALED_HEAD.size:
        raise IntegrityError("envelope header length too small")
    pos = PREAMBLE_SIZE
    try:
        suite_id, kind_id, compression_id = _SEALED_HEAD.unpack_from(view, pos)
        pos += _SEALED_HEAD.size
        compression = _enum(Compression, compression_id, "compression")
        dictionary_id = 0
        if compression is Compression.ZSTD_DICTIONARY:
            (dictionary_id,) = _DICTIONARY_ID.unpack_from(view, pos)
            pos += _DICTIONARY_ID.size
        payload_size, salt, commitment, key_length = _SEALED_TAIL.unpack_from(view, pos)
        pos += _SEALED_TAIL.size
        key_end = pos + key_length
        if key_end > total:
            raise IntegrityError("object key runs past the header")
        key = bytes(view[pos:key_end]).decode("utf-8")
        sealed_end = key_end
        if sealed_end + _SLOT_HEAD.size > total:
            raise IntegrityError("key slot runs past the header")
        method_id, kek_id_length = _SLOT_HEAD.unpack_from(view, sealed_end)
        pos = sealed_end + _SLOT_HEAD.size
        if kek_id_length == 0 or pos + kek_id_length > total:
            raise IntegrityError("KEK id missing or running past the header")
        kek_id = bytes(view[pos : pos + kek_id_length]).decode("utf-8")
        wrap_body = bytes(view[pos + kek_id_length : total])
    except struct.error:
        raise IntegrityError("envelope header truncated or malformed") from None
    except UnicodeDecodeError:
        raise IntegrityError("envelope header holds invalid UTF-8") from None
    wrap_method = _enum(WrapMethod, method_id, "wrap method")
    if wrap_method is WrapMethod.LOCAL and len(wrap_body) != LOCAL_WRAP_BODY_SIZE:
        raise IntegrityError("key slot's wrapped data key has the wrong length")
    header = EnvelopeHeader(
        version=VERSION,
        suite=_enum(Suite, suite_id, "cipher suite"),
        payload_kind=_enum(PayloadKind, kind_id, "payload kind"),
        compression=compression,
        dictionary_id=dictionary_id,
        payload_size=payload_size,
        salt=salt,
        commitment=commitment,
        key=key,
        wrap_method=wrap_method,
        kek_id=kek_id,
        wrap_body=wrap_body,
        header_size=total,
    )
    ciphertext = view[total:]
    if not header_only and len(ciphertext) < TAG_SIZE:
        raise IntegrityError("envelope truncated: payload shorter than its tag")
    aad = bytes(view[: len(MAGIC) + 1]) + bytes(view[PREAMBLE_SIZE:sealed_end])
    return Unpacked(header=header, associated_data=aad, ciphertext=ciphertext)


def is_envelope(data: bytes) -> bool:
    """True when ``data`` starts with the envelope magic (any version)."""
    return data[: len(MAGIC)] == MAGIC
