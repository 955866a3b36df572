"""Staged activation: a new key is added as ``decrypt`` with ``active_from``; every process that
loaded the keyring opens results under it at once and seals with it from that moment, without a
restart, so a rolling deploy never has one process sealing under a key another lacks
(docs/rotation.md, the runbook in ``keys --help``)."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope import keyring as keyring_module
from celery_s3_envelope.cli import envelope
from support.apps import MakeApp, backend_of
from support.cli import invoke

ROOT = Path(__file__).parent.parent


class Clock:
    """``time.time`` for the keyring module, moved by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(float(int(time.time())))  # whole seconds, as keyring files store times
    monkeypatch.setattr(keyring_module.time, "time", clock)
    return clock


def staged_keyring(at: datetime) -> cse.Keyring:
    old = cse.LocalKey("k1", b"\x01" * 32, cse.KeyState.ACTIVE)
    new = cse.LocalKey("k2", b"\x02" * 32, cse.KeyState.DECRYPT).scheduled(at)
    return cse.Keyring([old, new])


def test_every_copy_switches_at_the_stated_moment(clock: Clock) -> None:
    at = datetime.fromtimestamp(clock.now + 60, UTC)
    document = staged_keyring(at).to_dict()
    copies = [cse.Keyring.from_dict(json.loads(json.dumps(document))) for _ in range(3)]
    assert {k.active.id for k in copies} == {"k1"}
    sealed_before = cse.seal("before", key="x", keyring=copies[0])
    clock.now += 59.9
    assert {k.active.id for k in copies} == {"k1"}
    clock.now += 0.1
    assert {k.active.id for k in copies} == {"k2"}  # all at once, none reloaded
    sealed_after = cse.seal("after", key="x", keyring=copies[1])
    assert cse.inspect(sealed_before).kek_id == "k1" and cse.inspect(sealed_after).kek_id == "k2"
    for reader in copies:  # both open everywhere, before and after the switch
        assert cse.unseal(sealed_after, keyring=reader, key="x") == "after"
        assert cse.unseal(sealed_before, keyring=reader, key="x") == "before"


def test_a_staged_key_opens_results_before_its_time(clock: Clock) -> None:
    at = datetime.fromtimestamp(clock.now + 3600, UTC)
    reader = staged_keyring(at)
    writer = cse.Keyring([reader.get("k2").with_state(cse.KeyState.ACTIVE)])
    sealed = cse.seal("early", key="x", keyring=writer)  # another process, already switched
    assert reader.active.id == "k1" and cse.unseal(sealed, keyring=reader, key="x") == "early"


def test_only_a_decrypt_key_can_be_staged() -> None:
    at = datetime.now(UTC)
    for state in (cse.KeyState.ACTIVE, cse.KeyState.RETIRED):
        entries = [
            cse.LocalKey("k1", b"\x01" * 32, cse.KeyState.ACTIVE),
            cse.LocalKey("k2", b"\x02" * 32, state).scheduled(at),
        ]
        if state is cse.KeyState.ACTIVE:
            entries[0] = entries[0].with_state(cse.KeyState.DECRYPT)
        with pytest.raises(cse.KeyringError, match="only a 'decrypt' key can be staged"):
            cse.Keyring(entries)
    with pytest.raises(cse.KeyringError, match="'active_from' is not an ISO 8601"):
        document = staged_keyring(at).to_dict()
        document["keys"][1]["active_from"] = "tomorrow"
        cse.Keyring.from_dict(document)


def test_keys_add_stage_list_and_settle(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys.json"
    assert invoke(envelope, "keys", "generate", "--out", path).exit_code == 0
    added = invoke(envelope, "keys", "add", path, "--activate-at", "+2h")
    assert added.exit_code == 0, added.output
    assert re.fullmatch(r"added key k2 \(decrypt, active from \S+Z\) to \S+\n", added.stdout)
    listed = invoke(envelope, "keys", "list", path).stdout
    assert re.search(r"^k2\s+decrypt \(active from \S+Z\)", listed, re.MULTILINE)
    assert cse.Keyring.from_file(path).active.id == "k1"
    both = invoke(envelope, "keys", "add", path, "--activate", "--activate-at", "+1h")
    assert both.exit_code == 2
    clock.now += 2 * 3600 + 1
    assert cse.Keyring.from_file(path).active.id == "k2"
    retired = invoke(envelope, "keys", "retire", path, "k1")  # settled first: k2 is active now
    assert retired.exit_code == 0, retired.output
    stored = json.loads(path.read_text())["keys"]
    assert [(k["id"], k["state"], "active_from" in k) for k in stored] == [
        ("k1", "retired", False),
        ("k2", "active", False),
    ]


def test_keys_activate_at_stages_an_existing_key(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys.json"
    invoke(envelope, "keys", "generate", "--out", path)
    invoke(envelope, "keys", "add", path)
    at = datetime.fromtimestamp(clock.now, UTC) + timedelta(minutes=30)
    staged = invoke(envelope, "keys", "activate", path, "k2", "--at", at.isoformat())
    assert staged.exit_code == 0 and "staged key k2" in staged.stdout
    assert cse.Keyring.from_file(path).get("k2").active_from == at.replace(microsecond=0)
    assert cse.Keyring.from_file(path).active.id == "k1"


def test_an_unknown_kek_is_logged_with_the_keyrings_ids_and_the_remedy(
    make_app: MakeApp, keyring: cse.Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    """What an operator sees when a process lacks the key another one sealed with."""
    writer = backend_of(make_app(envelope_keyring=cse.Keyring.generate("k4")))
    writer.set("some-key", "value")
    reader = backend_of(make_app())  # the old keyring: k1 only
    with caplog.at_level(logging.ERROR), pytest.raises(cse.UnknownKey) as unknown:
        reader.get("some-key")
    message = str(unknown.value)
    assert "'k4'" in message and "'k1'" in message and "deploy the keyring" in message
    (record,) = [r for r in caplog.records if r.name == "celery_s3_envelope.backend"]
    assert "'k4'" in record.getMessage() and "it holds 'k1'" in record.getMessage()


def test_one_runbook_in_readme_rotation_doc_and_help() -> None:
    """The numbered runbook is the same text in `keys --help`, README and docs/rotation.md."""
    help_text = invoke(envelope, "keys", "--help").stdout
    steps = [line.strip() for line in help_text.splitlines() if re.match(r"\s+\d\. ", line)]
    assert len(steps) == 6 and "--activate-at" in steps[0]
    for document in ("README.md", "docs/rotation.md"):
        text = (ROOT / document).read_text()
        found = [line.strip() for line in text.splitlines() if re.match(r"\s*\d\. ", line)]
        start = found.index(steps[0]) if steps[0] in found else -1
        assert found[start : start + 6] == steps, document
