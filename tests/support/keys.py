"""Keyrings for tests: a second KEK made active (a rotation's target), and the forms in which a
keyring's key material could leak into text."""

from __future__ import annotations

import base64
import os

import celery_s3_envelope as cse


def with_active_k2(keyring: cse.Keyring) -> cse.Keyring:
    """``keyring`` plus a new local KEK ``k2``, made active: what a rotation moves results to;
    the keys there before still open what they sealed."""
    return keyring.with_entry(
        cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE), activate=True
    )


def two_keyrings() -> tuple[cse.Keyring, cse.Keyring]:
    """(k1 active), (k1 decrypt, k2 active)."""
    k1 = cse.Keyring.generate("k1")
    return k1, with_active_k2(k1)


def key_material(keyring: cse.Keyring) -> list[str]:
    """Each key's material as it could show in text: base64 (as in the file), hex, and the
    inside of its bytes repr."""
    found = []
    for entry in keyring.to_dict()["keys"]:
        raw = base64.b64decode(entry["key"])
        found += [entry["key"], raw.hex(), repr(raw)[2:-1]]
    return found
