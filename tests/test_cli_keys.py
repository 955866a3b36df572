"""``keys``: keyring files created and edited atomically, a ``.bak`` kept, key material never
shown, and results sealed before an edit still open after it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import Result

from celery_s3_envelope import Keyring, KeyState, LocalKey, seal, unseal
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.cli.keys import next_key_id
from support.cli import invoke


def run(*args: str | os.PathLike[str]) -> Result:
    return invoke(envelope, "keys", *args)


def materials(path: Path) -> set[str]:
    """Every key's base64 material, as stored in the file."""
    return {entry["key"] for entry in json.loads(path.read_text())["keys"]}


def assert_no_material(result: Result, *paths: Path) -> None:
    for path in paths:
        for material in materials(path):
            assert material not in result.output
            assert material[:12] not in result.output


def states(path: Path) -> dict[str, str]:
    return {entry.id: entry.state.value for entry in Keyring.from_file(path)}


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    result = run("generate", "--out", path)
    assert result.exit_code == 0, result.output
    return path


def test_generate(tmp_path: Path, keyring_file: Path) -> None:
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    assert states(keyring_file) == {"k1": "active"}
    custom = tmp_path / "custom.json"
    result = run("generate", "--out", custom, "--id", "prod-2025")
    assert result.exit_code == 0
    assert result.stdout == f"created {custom} with active key prod-2025\n"
    assert_no_material(result, custom)
    assert materials(custom) != materials(keyring_file)  # fresh random material each time


def test_generate_never_overwrites(keyring_file: Path) -> None:
    before = keyring_file.read_bytes()
    result = run("generate", "--out", keyring_file)
    assert result.exit_code == 2  # a usage or configuration error
    assert "refusing to overwrite" in result.stderr
    assert keyring_file.read_bytes() == before
    assert not keyring_file.with_name("keys.json.bak").exists()


def test_add_then_activate_then_retire(keyring_file: Path) -> None:
    original = keyring_file.read_bytes()
    result = run("add", keyring_file)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"added key k2 (decrypt) to {keyring_file}\n"
    assert states(keyring_file) == {"k1": "active", "k2": "decrypt"}
    backup = keyring_file.with_name("keys.json.bak")
    assert backup.read_bytes() == original
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    assert_no_material(result, keyring_file)

    result = run("activate", keyring_file, "k2")
    assert result.exit_code == 0
    assert states(keyring_file) == {"k1": "decrypt", "k2": "active"}
    assert_no_material(result, keyring_file)

    result = run("retire", keyring_file, "k1")
    assert result.exit_code == 0
    assert states(keyring_file) == {"k1": "retired", "k2": "active"}
    assert_no_material(result, keyring_file, backup)


def test_add_activate_keeps_old_results_readable(tmp_path: Path, keyring_file: Path) -> None:
    old = seal("old result", key="a", keyring=Keyring.from_file(keyring_file))
    result = run("add", keyring_file, "--activate", "--id", "2025-q3")
    assert result.exit_code == 0
    assert result.stdout == f"added key 2025-q3 (active) to {keyring_file}\n"
    edited = Keyring.from_file(keyring_file)
    assert edited.active.id == "2025-q3"
    new = seal("new result", key="b", keyring=edited)
    assert unseal(old, keyring=edited, key="a") == "old result"
    assert unseal(new, keyring=edited, key="b") == "new result"
    # and k1's material did not change in the edit
    previous = Keyring.from_file(keyring_file.with_name("keys.json.bak"))
    assert unseal(old, keyring=previous, key="a") == "old result"


def test_edits_keep_existing_material(keyring_file: Path) -> None:
    before = materials(keyring_file)
    for args in (("add", keyring_file), ("activate", keyring_file, "k2"), ("add", keyring_file)):
        assert run(*args).exit_code == 0
    assert before < materials(keyring_file) and len(materials(keyring_file)) == 3


@pytest.mark.parametrize(
    ("ids", "expected"),
    [(["k1"], "k2"), (["k1", "k7"], "k8"), (["prod"], "k1"), (["k1", "k02"], "k3")],
)
def test_next_key_id(ids: list[str], expected: str) -> None:
    keyring = Keyring(
        LocalKey(kek_id, os.urandom(32), KeyState.ACTIVE if i == 0 else KeyState.DECRYPT)
        for i, kek_id in enumerate(ids)
    )
    assert next_key_id(keyring) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "{path}", "--id", "k1"), "key 'k1' is already in"),
        (("activate", "{path}", "k9"), "no key 'k9' in {path} (it holds: k1)"),
        (("retire", "{path}", "k1"), "key k1 is the active key: activate another key first"),
        (("retire", "{path}", "nope"), "no key 'nope'"),
    ],
)
def test_refused_edits_leave_the_file_alone(
    keyring_file: Path, args: tuple[str, ...], message: str
) -> None:
    before = keyring_file.read_bytes()
    result = run(*(a.format(path=keyring_file) for a in args))
    assert result.exit_code == 2  # a usage or configuration error
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert message.format(path=keyring_file) in result.stderr
    assert keyring_file.read_bytes() == before
    assert not keyring_file.with_name("keys.json.bak").exists()


def test_no_op_edits_do_not_write(keyring_file: Path) -> None:
    before = keyring_file.stat().st_mtime_ns
    result = run("activate", keyring_file, "k1")
    assert result.exit_code == 0 and "already active" in result.stdout
    assert keyring_file.stat().st_mtime_ns == before
    assert not keyring_file.with_name("keys.json.bak").exists()


def test_interrupted_edit_leaves_the_old_keyring(
    keyring_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while replacing the file (disk full, crash) leaves the old keyring whole and
    no temporary files behind."""
    before = keyring_file.read_bytes()
    real_replace = os.replace

    def failing_replace(src: str, dst: str | Path) -> None:
        if Path(dst) == keyring_file:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    result = run("add", keyring_file, "--activate")
    assert result.exit_code == 2  # a usage or configuration error
    assert result.stderr == (
        f"Error: cannot write keyring {str(keyring_file)!r}: No space left on device\n"
    )
    assert keyring_file.read_bytes() == before
    leftovers = [p.name for p in keyring_file.parent.iterdir()]
    assert sorted(leftovers) == ["keys.json", "keys.json.bak"]


def test_list(keyring_file: Path) -> None:
    run("add", keyring_file, "--id", "second")
    result = run("list", keyring_file)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [["k1", "active"], ["second", "decrypt"]]
    assert_no_material(result, keyring_file)
    as_json = run("list", "--json", keyring_file)
    entries = json.loads(as_json.stdout)
    assert [set(e) for e in entries] == [{"id", "state", "created"}] * 2
    assert_no_material(as_json, keyring_file)


def test_broken_keyring_is_one_line_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"version": 1, "keys": [{"id": "k1", "key": "c2VjcmV0IG1hdGVyaWFs", ')
    path.chmod(0o600)
    for args in (("list", path), ("add", path), ("activate", path, "k1")):
        result = run(*args)
        assert result.exit_code == 2  # a usage or configuration error
        assert result.stderr == "Error: keyring is not valid JSON (JSONDecodeError)\n"
        assert "c2VjcmV0" not in result.output


def test_missing_keyring_is_a_usage_error(tmp_path: Path) -> None:
    result = run("list", tmp_path / "nope.json")
    assert result.exit_code == 2 and "does not exist" in result.stderr
