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


def sealed_part(
    *,
    suite: int,
    payload_kind: int,
    compression: int,
    dictionary_id: int,
    payload_size: int,
    salt: bytes,
    commitment: bytes,
    key: bytes,
) -> bytes:
    """The sealed part's bytes (``suite`` .. ``key``): fixed once an envelope is sealed."""
    if len(salt) != SALT_SIZE or len(commitment) != COMMITMENT_SIZE:
        raise ValueError("salt and commitment must be 16 and 32 bytes")
    if compression == Compression.ZSTD_DICTIONARY:
        dictionary = _DICTIONARY_ID.pack(dictionary_id)
    elif dictionary_id:
        raise ValueError("a dictionary id needs compression ZSTD_DICTIONARY")
    else:
        dictionary = b""
    return b"".join(
        (
            _SEALED_HEAD.pack(suite, payload_kind, compression),
            dictionary,
            _SEALED_TAIL.pack(payload_size, salt, commitment, len(key)),
            key,
        )
    )


_AAD_PREFIX = MAGIC + bytes((VERSION,))


def associated_data_for(sealed: bytes) -> bytes:
    """The payload's AEAD associated data: magic, version and the sealed part."""
    return _AAD_PREFIX + sealed


def associated_data(header: EnvelopeHeader) -> bytes:
    """The associated data of ``header``'s envelope."""
    return associated_data_for(_sealed_part_of(header))


def _sealed_part_of(h: EnvelopeHeader) -> bytes:
    return sealed_part(
        suite=h.suite,
        payload_kind=h.payload_kind,
        compression=h.compression,
        dictionary_id=h.dictionary_id,
        payload_size=h.payload_size,
        salt=h.salt,
        commitment=h.commitment,
        key=h.key.encode("utf-8"),
    )


def pack_parts(
    sealed: bytes, wrap_method: int, kek_id: bytes, wrap_body: bytes, ciphertext: bytes
) -> bytes:
    """Assemble an envelope from its sealed part, key slot fields and payload."""
    if not 1 <= len(kek_id) <= 255:
        raise ValueError("a KEK id is 1 to 255 bytes of UTF-8")
    header_length = PREAMBLE_SIZE + len(sealed) + _SLOT_HEAD.size + len(kek_id) + len(wrap_body)
    if header_length > MAX_HEADER_SIZE:
        raise ValueError("envelope header too long (object key or wrap body too large)")
    return b"".join(
        (
            _PREAMBLE.pack(MAGIC, VERSION, header_length),
            sealed,
            _SLOT_HEAD.pack(wrap_method, len(kek_id)),
            kek_id,
            wrap_body,
            ciphertext,
        )
    )


def pack(header: EnvelopeHeader, ciphertext: bytes) -> bytes:
    """Serialize ``header`` and append ``ciphertext`` (GCM output, tag included)."""
    if header.version != VERSION:
        raise ValueError(f"this release writes format version {VERSION} only")
    return pack_parts(
        _sealed_part_of(header),
        header.wrap_method,
        header.kek_id.encode("utf-8"),
        header.wrap_body,
        ciphertext,
    )


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
_MEMBERS: dict[type[IntEnum], dict[int, IntEnum]] = {
    kind: {member.value: member for member in kind}
    for kind in (Suite, PayloadKind, Compression, WrapMethod)
}


def _enum(kind: type[_E], value: int, what: str) -> _E:
    member = _MEMBERS[kind].get(value)
    if member is None:
        raise UnsupportedVersion(f"unknown {what} id {value} in envelope header")
    return member  # type: ignore[return-value]


_FIXED_HEAD = struct.Struct(">4sBHBBB")  # preamble and the sealed part's first three fields


def unpack(data: bytes, *, header_only: bool = False) -> Unpacked:
    """Split an envelope into header, associated data and ciphertext, checking every length.

    ``header_only`` accepts a prefix that ends after the header (a ranged GET); the returned
    ciphertext is then whatever followed the header in ``data``.
    """
    data = bytes(data)
    if len(data) < _FIXED_HEAD.size:
        header_length(data)  # the precise error for a short prefix...
        raise IntegrityError("envelope truncated inside its header")  # ...or this one
    magic, version, total, suite_id, kind_id, compression_id = _FIXED_HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        header_length(data)  # not an envelope, or another version: the precise error
    if total > len(data):
        raise IntegrityError("envelope truncated inside its header")
    header = data[:total]  # every read below stays inside the header
    try:
        pos = _FIXED_HEAD.size
        dictionary_id = 0
        if compression_id == Compression.ZSTD_DICTIONARY:
            (dictionary_id,) = _DICTIONARY_ID.unpack_from(header, pos)
            pos += _DICTIONARY_ID.size
        payload_size, salt, commitment, key_length = _SEALED_TAIL.unpack_from(header, pos)
        pos += _SEALED_TAIL.size
        sealed_end = pos + key_length
        key = header[pos:sealed_end].decode("utf-8")
        method_id, kek_id_length = _SLOT_HEAD.unpack_from(header, sealed_end)
        pos = sealed_end + _SLOT_HEAD.size
        kek_id = header[pos : pos + kek_id_length].decode("utf-8")
    except struct.error:
        raise IntegrityError("envelope header truncated or malformed") from None
    except UnicodeDecodeError:
        raise IntegrityError("envelope header holds invalid UTF-8") from None
    pos += kek_id_length
    if kek_id_length == 0 or pos > total:
        raise IntegrityError("KEK id missing or running past the header")
    wrap_body = header[pos:]
    wrap_method = _enum(WrapMethod, method_id, "wrap method")
    if wrap_method is WrapMethod.LOCAL and len(wrap_body) != LOCAL_WRAP_BODY_SIZE:
        raise IntegrityError("key slot's wrapped data key has the wrong length")
    parsed = EnvelopeHeader(
        VERSION,
        _enum(Suite, suite_id, "cipher suite"),
        _enum(PayloadKind, kind_id, "payload kind"),
        _enum(Compression, compression_id, "compression"),
        dictionary_id,
        payload_size,
        salt,
        commitment,
        key,
        wrap_method,
        kek_id,
        wrap_body,
        total,
    )
    ciphertext = memoryview(data)[total:]
    if not header_only and len(ciphertext) < TAG_SIZE:
        raise IntegrityError("envelope truncated: payload shorter than its tag")
    return Unpacked(parsed, _AAD_PREFIX + header[PREAMBLE_SIZE:sealed_end], ciphertext)


def is_envelope(data: bytes) -> bool:
    """True when ``data`` starts with the envelope magic (any version)."""
    return data[: len(MAGIC)] == MAGIC
