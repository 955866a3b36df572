"""Keyrings: formats, validation, secrecy of key material, file permissions."""

from __future__ import annotations

import base64
import json
import os
import stat
import warnings
from pathlib import Path

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope.keyring import InsecureKeyringWarning
from support.paths import ROOT


def entry(kek_id: str, state: str = "active", material: bytes | None = None) -> dict[str, str]:
    return {
        "id": kek_id,
        "state": state,
        "created": "2026-11-25T10:00:00Z",
        "key": base64.b64encode(material or os.urandom(32)).decode(),
    }


def test_generate_save_and_load_round_trip(tmp_path: Path) -> None:
    keyring = cse.Keyring.generate("k1")
    path = tmp_path / "keys.json"
    keyring.to_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = cse.Keyring.from_file(path)
    envelope = cse.seal("v", key="k", keyring=keyring)
    assert cse.unseal(envelope, keyring=loaded, key="k") == "v"
    assert [(e.id, e.state) for e in loaded] == [("k1", cse.KeyState.ACTIVE)]


def test_to_file_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    cse.Keyring.generate("k1").to_file(path)
    cse.Keyring.generate("k2").to_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]
    assert cse.Keyring.from_file(path).active.id == "k2"


def test_loose_permissions_warn(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    cse.Keyring.generate("k1").to_file(path)
    path.chmod(0o644)
    with pytest.warns(InsecureKeyringWarning, match="chmod 600"):
        cse.Keyring.from_file(path)


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    document = {"version": 1, "keys": [entry("env-key")]}
    monkeypatch.setenv("CELERY_S3_ENVELOPE_KEYRING", json.dumps(document))
    assert cse.Keyring.from_env().active.id == "env-key"
    monkeypatch.setenv("OTHER_VAR", json.dumps(document))
    assert cse.Keyring.from_env("OTHER_VAR").active.id == "env-key"
    monkeypatch.delenv("CELERY_S3_ENVELOPE_KEYRING")
    with pytest.raises(cse.KeyringError, match="CELERY_S3_ENVELOPE_KEYRING"):
        cse.Keyring.from_env()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"keys": []}, "non-empty"),
        ({"keys": [entry("a", "decrypt")]}, "exactly one active"),
        ({"keys": [entry("a"), entry("b")]}, "exactly one active"),
        ({"keys": [entry("a"), entry("a", "decrypt")]}, "duplicate"),
        ({"keys": [{**entry("a"), "key": "!!notbase64"}]}, "base64"),
        ({"keys": [entry("a", material=b"short")]}, "32 bytes"),
        ({"keys": [{**entry("a"), "state": "enabled"}]}, "state"),
        ({"keys": [{**entry("a"), "created": "yesterday"}]}, "ISO 8601"),
        ({"keys": [{k: v for k, v in entry("a").items() if k != "key"}]}, "no key material"),
        ({"keys": [entry("")]}, "1 to 255"),
        ({"version": 2, "keys": [entry("a")]}, "version"),
    ],
)
def test_invalid_keyrings_are_refused_clearly(document: dict[str, object], message: str) -> None:
    with pytest.raises(cse.KeyringError, match=message):
        cse.Keyring.from_dict(document)


def test_bad_json_error_does_not_echo_the_text() -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(cse.KeyringError) as caught:
        cse.Keyring.from_json('{"keys": [{"key": "' + secret + '"')
    assert secret not in str(caught.value)


def test_unknown_id_lookup_names_it() -> None:
    with pytest.raises(cse.UnknownKey, match="'nope'"):
        cse.Keyring.generate("k1").get("nope")


def test_key_material_never_in_repr_str_or_errors() -> None:
    material = os.urandom(32)
    keyring = cse.Keyring.from_dict({"keys": [entry("k1", material=material)]})
    shown = " ".join([repr(keyring), str(keyring), repr(keyring.active), str(keyring.active)])
    shown += json.dumps(keyring.active.describe())
    for form in (material.hex(), base64.b64encode(material).decode(), repr(material)):
        assert form not in shown
    assert "k1" in repr(keyring)


def test_state_edits_keep_exactly_one_active() -> None:
    keyring = cse.Keyring.generate("k1").with_entry(
        cse.LocalKey("k2", os.urandom(32), cse.KeyState.DECRYPT), activate=True
    )
    assert {e.id: e.state.value for e in keyring} == {"k1": "decrypt", "k2": "active"}
    back = keyring.with_state("k1", cse.KeyState.ACTIVE)
    assert {e.id: e.state.value for e in back} == {"k1": "active", "k2": "decrypt"}
    with pytest.raises(cse.KeyringError, match="exactly one active"):
        keyring.with_state("k2", cse.KeyState.RETIRED)


def test_keys_example_is_a_valid_keyring_marked_as_example() -> None:
    with pytest.warns(InsecureKeyringWarning, match="example"):
        keyring = cse.Keyring.from_file(ROOT / "keys.example")
    assert all(e.id.startswith("example-") for e in keyring)
    text = (ROOT / "keys.example").read_text()
    assert "never use" in text.lower()
    assert cse.unseal(cse.seal("x", key="k", keyring=keyring), keyring=keyring) == "x"
