"""Section 1: our seal + unseal against the bare primitive chain, written inline here.

The bare chain is what a hand-rolled envelope with the same protections would cost: UTF-8
encode, zstd level 3, a fresh DEK and salt, HKDF-SHA256 for the content key, a per-object
HKDF wrapping key and AES key wrap, AES-256-GCM; then all of it backwards. Everything our codec
adds (header packing and parsing, checks, the stage objects) is the difference.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from harness import Goal, fmt_time, interleave, ratio, table
from payloads import PAYLOADS, celery_result

import celery_s3_envelope as cse
from celery_s3_envelope.pipeline import Pipeline

KEY = "celery-task-meta-5f0d3c6e-2b7a-4a59-9d1e-0c8f2a6b7e41"
TARGETS = {"1 KiB": 1.5, "64 KiB": None, "4 MiB": 1.1}


def bare_chain(text: str, kek: bytes) -> Any:
    compressor, decompressor = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    aad = b"\xe5CSE\x01" + KEY.encode() + b"\x00" * 60  # a header-sized associated data

    def run() -> str:
        frame = compressor.compress(text.encode())
        fresh = os.urandom(48)
        dek, salt = fresh[:32], fresh[32:]
        okm = HKDF(hashes.SHA256(), 76, salt, b"content").derive(dek)
        wrap_info = b"wrap" + hashlib.sha256(aad).digest()
        wrapped = aes_key_wrap(HKDF(hashes.SHA256(), 32, salt, wrap_info).derive(kek), dek)
        ciphertext = AESGCM(okm[:32]).encrypt(okm[32:44], frame, aad)
        # and back
        dek2 = aes_key_unwrap(HKDF(hashes.SHA256(), 32, salt, wrap_info).derive(kek), wrapped)
        okm2 = HKDF(hashes.SHA256(), 76, salt, b"content").derive(dek2)
        plain = AESGCM(okm2[:32]).decrypt(okm2[32:44], ciphertext, aad)
        return decompressor.decompress(plain).decode()

    return run


def ours(text: str, keyring: cse.Keyring) -> Any:
    pipeline = Pipeline()

    def run() -> str | bytes:
        return pipeline.unseal(
            pipeline.seal(text, key=KEY, keyring=keyring), keyring=keyring, key=KEY
        )

    return run


def run(quick: bool = False) -> dict[str, Any]:
    keyring = cse.Keyring.generate("k1")
    kek = os.urandom(32)
    rows, goals, results = [], [], {}
    for label, size in PAYLOADS.items():
        text = celery_result(size)
        contenders = {"ours": ours(text, keyring), "bare": bare_chain(text, kek)}
        assert contenders["ours"]() == contenders["bare"]() == text
        rounds = 7 if quick else (25 if size < 1 << 20 else 11)
        timings = interleave(contenders, rounds=rounds, round_time=0.02 if size < 1 << 20 else 0.2)
        r = ratio(timings, "ours", "bare")
        q1, q3 = r.quartiles()
        rows.append(
            [
                label,
                f"{len(text):,}",
                fmt_time(timings["ours"].median),
                fmt_time(timings["bare"].median),
                f"{r.median:.2f}x",
                f"{q1:.2f}-{q3:.2f}",
            ]
        )
        results[label] = {
            "bytes": len(text),
            "ours_seconds": timings["ours"].median,
            "bare_seconds": timings["bare"].median,
            "ratio": r.median,
            "ratio_quartiles": [q1, q3],
        }
        target = TARGETS[label]
        if target is not None:
            goals.append(Goal(f"codec_{label.replace(' ', '').lower()}_vs_bare", r.median, target))
    print("## 1. Codec: seal + unseal vs the bare primitives\n")
    print(table(["payload", "bytes", "ours", "bare chain", "ratio", "ratio IQR"], rows))
    print()
    return {"results": results, "goals": goals}
