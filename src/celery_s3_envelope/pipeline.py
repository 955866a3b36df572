"""The codec: serialize -> compress -> encrypt, and back.

Each stage is a small object with ``encode`` / ``decode``; what a stage did is recorded in the
envelope header (payload kind, compression, sizes), so decoding needs no configuration beyond
the keyring and a size limit. No Celery, no boto3: the offline decode helper runs on this alone.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .envelope import (
    COMMITMENT_SIZE,
    MAGIC,
    MAX_HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    Compression,
    EnvelopeHeader,
    PayloadKind,
    Suite,
    Unpacked,
    associated_data_for,
    pack_parts,
    sealed_part,
    unpack,
)
from .errors import IntegrityError, SizeLimitExceeded, UnsupportedVersion
from .kek import KeyEntry
from .keyring import KeySource
from .scrub import scrubbed

_SHA256 = hashes.SHA256()  # stateless: one instance serves every derivation
DEK_SIZE = 32
NONCE_SIZE = 12
_CONTENT_OKM = DEK_SIZE + NONCE_SIZE + COMMITMENT_SIZE
CONTENT_LABEL = b"celery-s3-envelope/v1/content\x00"
DEFAULT_COMPRESSION_LEVEL = 3
DEFAULT_COMPRESSION_MIN_SIZE = 256
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


class SerializeStage:
    """str <-> UTF-8 bytes (lone surrogates passed through), bytes unchanged; remembers which."""

    def encode(self, value: str | bytes) -> tuple[bytes, PayloadKind]:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass"), PayloadKind.TEXT
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value), PayloadKind.BYTES
        raise TypeError(f"only str or bytes can be sealed, not {type(value).__name__}")

    def decode(self, data: bytes, kind: PayloadKind) -> str | bytes:
        if kind is PayloadKind.BYTES:
            return data
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise IntegrityError("text payload is not valid UTF-8") from None


class CompressStage:
    """zstd above a size threshold; bounded decompression.

    zstd contexts are reused, one per thread (python-zstandard objects are not thread-safe).
    Decompression refuses any frame whose size is unknown or differs from the header's
    declared size, so it never allocates more than ``min(declared, max_size)``.
    """

    def __init__(self, level: int, min_size: int) -> None:
        if not -7 <= level <= 22:
            raise ValueError("zstd compression level must be between -7 and 22")
        if min_size < 0:
            raise ValueError("compression minimum size must be >= 0")
        self.level = level
        self.min_size = min_size
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if compressor is None:
            compressor = self._local.c = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True
            )
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor: zstandard.ZstdDecompressor | None = getattr(self._local, "d", None)
        if decompressor is None:
            decompressor = self._local.d = zstandard.ZstdDecompressor()
        return decompressor

    def encode(self, data: bytes, *, enabled: bool = True) -> tuple[bytes, Compression]:
        if not enabled or len(data) < self.min_size:
            return data, Compression.NONE
        compressed: bytes = self._compressor().compress(data)
        if len(compressed) >= len(data):  # incompressible: store as is, save the decode work
            return data, Compression.NONE
        return compressed, Compression.ZSTD

    def decode(self, data: bytes, header: EnvelopeHeader) -> bytes:
        declared = header.payload_size
        if header.compression is Compression.NONE:
            if len(data) != declared:
                raise IntegrityError("payload length differs from the header's declared size")
            return data
        if header.compression is not Compression.ZSTD:
            raise UnsupportedVersion("zstd dictionaries are not supported by this release")
        try:
            frame_size = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            raise IntegrityError("compressed payload is not a zstd frame") from None
        if frame_size != declared:
            raise SizeLimitExceeded(
                f"compressed payload would expand to {frame_size} bytes, "
                f"the header declares {declared}"
            )
        if declared == 0:
            return b""
        stream = self._decompressor().decompressobj(write_size=declared)
        try:
            out: bytes = stream.decompress(data)
        except zstandard.ZstdError:
            raise IntegrityError("compressed payload is corrupt") from None
        if len(out) != declared or not stream.eof or stream.unused_data:
            raise IntegrityError("compressed payload does not match its declared size")
        return out


@dataclass(frozen=True, slots=True)
class ContentKeys:
    key: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    commitment: bytes = field(repr=False)


def derive_content_keys(dek: bytes, salt: bytes, suite: Suite) -> ContentKeys:
    """HKDF-SHA256(DEK, salt) -> content key (32) || nonce (12) || key commitment (32)."""
    okm = HKDF(_SHA256, _CONTENT_OKM, salt, CONTENT_LABEL + bytes((suite,))).derive(dek)
    return ContentKeys(
        okm[:DEK_SIZE], okm[DEK_SIZE : DEK_SIZE + NONCE_SIZE], okm[DEK_SIZE + NONCE_SIZE :]
    )


class EncryptStage:
    """AES-256-GCM under a fresh DEK per envelope, the DEK wrapped by a KEK in the key slot."""

    suite = Suite.AES256GCM_HKDF_SHA256_COMMIT

    def seal(
        self,
        plaintext: bytes,
        *,
        payload_kind: PayloadKind,
        compression: Compression,
        payload_size: int,
        key: str,
        kek: KeyEntry,
        dek: bytes | None = None,
        salt: bytes | None = None,
    ) -> bytes:
        """Encrypt ``plaintext`` (already compressed) and pack the envelope.

        ``dek`` and ``salt`` are drawn fresh from ``os.urandom``; passing them is for test vectors.
        """
        if dek is None or salt is None:
            fresh = os.urandom(DEK_SIZE + SALT_SIZE)
            dek, salt = fresh[:DEK_SIZE], fresh[DEK_SIZE:]
        keys = derive_content_keys(dek, salt, self.suite)
        sealed = sealed_part(
            suite=self.suite,
            payload_kind=payload_kind,
            compression=compression,
            dictionary_id=0,
            payload_size=payload_size,
            salt=salt,
            commitment=keys.commitment,
            key=key.encode("utf-8"),
        )
        aad = associated_data_for(sealed)
        body = kek.wrap(dek, salt=salt, associated_data=aad)
        ciphertext = AESGCM(keys.key).encrypt(keys.nonce, plaintext, aad)
        return pack_parts(sealed, kek.method, kek.id_bytes, body, ciphertext)

    def unwrap(
        self, header: EnvelopeHeader, aad: bytes, kek: KeyEntry
    ) -> tuple[bytes, ContentKeys]:
        """The DEK from the key slot, checked against the key commitment, and its content keys."""
        if kek.method is not header.wrap_method:
            raise IntegrityError(
                f"key slot's wrap method {header.wrap_method.name} does not match "
                f"KEK {kek.id!r} ({kek.method.name})"
            )
        dek = kek.unwrap(header.wrap_body, salt=header.salt, associated_data=aad)
        keys = derive_content_keys(dek, header.salt, header.suite)
        if not hmac.compare_digest(keys.commitment, header.commitment):
            raise IntegrityError("key commitment mismatch: the data key does not belong here")
        return dek, keys

    def open(
        self, header: EnvelopeHeader, aad: bytes, ciphertext: memoryview, kek: KeyEntry
    ) -> bytes:
        """Unwrap the DEK, check the key commitment, then decrypt and authenticate."""
        _, keys = self.unwrap(header, aad, kek)
        try:
            return AESGCM(keys.key).decrypt(keys.nonce, ciphertext, aad)
        except InvalidTag:
            raise IntegrityError("payload authentication failed (envelope changed)") from None


class Pipeline:
    """The configured codec: ``seal`` a value for an object key, ``unseal`` it back."""

    def __init__(
        self,
        *,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        compression_min_size: int = DEFAULT_COMPRESSION_MIN_SIZE,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self.serialize = SerializeStage()
        self.compress = CompressStage(compression_level, compression_min_size)
        self.encrypt = EncryptStage()
        self.max_size = max_size

    @scrubbed
    def seal(
        self,
        value: str | bytes,
        *,
        key: str,
        keyring: KeySource,
        compress: bool = True,
        dek: bytes | None = None,
        salt: bytes | None = None,
    ) -> bytes:
        """Seal ``value`` for the object ``key`` under the keyring's active KEK."""
        data, kind = self.serialize.encode(value)
        if len(data) > self.max_size:
            raise SizeLimitExceeded(
                f"value of {len(data)} bytes exceeds the maximum of {self.max_size}"
            )
        payload, compression = self.compress.encode(data, enabled=compress)
        return self.encrypt.seal(
            payload,
            payload_kind=kind,
            compression=compression,
            payload_size=len(data),
            key=key,
            kek=keyring.active,
            dek=dek,
            salt=salt,
        )

    @scrubbed
    def unseal(
        self,
        envelope: bytes,
        *,
        keyring: KeySource,
        key: str | None = None,
        accept_key: Callable[[str], bool] | None = None,
    ) -> str | bytes:
        """Open ``envelope``; with ``key``, refuse one sealed for another object key; with
        ``accept_key``, one sealed for a key it does not accept (task messages: any task id)."""
        parts = checked_parts(envelope, key=key, max_size=self.max_size)
        header = parts.header
        if accept_key is not None and not accept_key(header.key):
            raise IntegrityError(f"envelope sealed for {header.key!r} is not accepted here")
        kek = keyring.for_unwrap(header.kek_id)
        plaintext = self.encrypt.open(header, parts.associated_data, parts.ciphertext, kek)
        data = self.compress.decode(plaintext, header)
        return self.serialize.decode(data, header.payload_kind)


def largest_envelope(max_size: int) -> int:
    """The most bytes an envelope of a value up to ``max_size`` can take: the largest header,
    the payload (stored compressed only when shorter) and the tag. Anything larger is refused
    before its body is read (``S3Store(max_object_size=...)``, ``decode``)."""
    return max_size + MAX_HEADER_SIZE + TAG_SIZE


def checked_parts(envelope: bytes, *, key: str | None, max_size: int) -> Unpacked:
    """Parse ``envelope`` and make every check that needs no key (``unseal`` and ``rewrap``):
    the object key it was read from, the size limit, and a payload length consistent with the
    header (stored zstd frames are always shorter than the plaintext, so a longer payload is a
    forgery, refused before anything is decrypted)."""
    parts = unpack(envelope)
    header = parts.header
    if key is not None and header.key != key:
        raise IntegrityError(
            f"envelope was sealed for object key {header.key!r}, read from {key!r}"
        )
    if header.payload_size > max_size:
        raise SizeLimitExceeded(
            f"envelope declares {header.payload_size} bytes, more than the maximum of {max_size}"
        )
    stored = len(parts.ciphertext) - TAG_SIZE
    if header.compression is Compression.NONE and stored != header.payload_size:
        raise IntegrityError("payload length differs from the header's declared size")
    if header.compression is not Compression.NONE and stored >= header.payload_size:
        raise SizeLimitExceeded(
            f"compressed payload of {stored} bytes is not shorter than its declared size"
        )
    return parts


@scrubbed
def rewrap(
    envelope: bytes, *, keyring: KeySource, key: str | None = None, max_size: int = DEFAULT_MAX_SIZE
) -> bytes:
    """The same envelope with its DEK re-wrapped under the keyring's active KEK.

    Only the key slot changes; the sealed part and the payload ciphertext are kept byte for byte.
    The old slot is unwrapped with the KEK it names and the DEK is checked against the key
    commitment first, so nothing that would not open is ever re-wrapped. ``key`` (the object key
    the envelope was read from) must match the sealed one, and every check ``unseal`` makes
    before decrypting is made here too; only the GCM tag is left unchecked (``--verify``).
    """
    parts = checked_parts(envelope, key=key, max_size=max_size)
    header = parts.header
    old = keyring.for_unwrap(header.kek_id)
    dek, _ = EncryptStage().unwrap(header, parts.associated_data, old)
    new = keyring.active
    body = new.wrap(dek, salt=header.salt, associated_data=parts.associated_data)
    sealed = parts.associated_data[len(MAGIC) + 1 :]
    return pack_parts(sealed, new.method, new.id_bytes, body, bytes(parts.ciphertext))


def inspect(envelope: bytes) -> EnvelopeHeader:
    """The header of an envelope (or of its first ``header_size`` bytes); no key needed."""
    return unpack(envelope, header_only=True).header
