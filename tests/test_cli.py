"""The offline command line: ``decode`` and ``inspect`` of files and stdin, with a keyring file.

What users rely on: the printed value is exactly what was sealed; every failure is one line on
stderr naming the source, exit status 1, no traceback and no plaintext; key material is never
shown; the file path works with neither Celery nor boto3 importable.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result

from celery_s3_envelope import Keyring, seal
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.keyring import DEFAULT_ENV_VAR
from support.cli import invoke
from support.keys import key_material

RESULT = {
    "status": "SUCCESS",
    "result": {"patient": "Zoë Ångström", "score": 97.5, "codes": ["A01", "B02"]},
    "traceback": None,
    "children": [],
    "date_done": "2025-06-01T12:00:00.000000+00:00",
    "task_id": "4b1f0c9e-0000-4000-8000-000000000001",
}
SECRET = "Zoë Ångström"
KEY = "celery-task-meta-4b1f0c9e-0000-4000-8000-000000000001"


@pytest.fixture
def sealed_file(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "result.bin"
    path.write_bytes(seal(json.dumps(RESULT), key=KEY, keyring=keyring))
    return path


def run(*args: str | os.PathLike[str], stdin: bytes | None = None) -> Result:
    return invoke(envelope, *args, stdin=stdin)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_clean_error(result: Result, source: str, *reason_words: str, status: int = 1) -> str:
    """Exit ``status`` (1: a damaged envelope, 2: a usage error, 3: plaintext; docs/cli.md),
    exactly one stderr line naming the source, no traceback, no plaintext."""
    assert result.exit_code == status, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = error_lines(result)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"Error: {source}: ")
    for word in reason_words:
        assert word in line
    assert "Traceback" not in result.output
    assert SECRET not in result.output
    assert result.stdout == ""
    return line


# -- decode: values ----------------------------------------------------------------------------


def test_decode_prints_the_result_pretty(sealed_file: Path, keyring_file: Path) -> None:
    result = run("decode", sealed_file, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == RESULT
    assert "\n  " in result.stdout  # indented, not the stored one-liner
    assert SECRET in result.stdout  # non-ASCII shown as is, not as \\u escapes
    assert result.stderr == ""


@pytest.mark.parametrize(
    "value",
    [
        json.dumps(RESULT, separators=(",", ":")),
        "plain text, not JSON \u2603",
        "lone surrogate \udc80 passes through",
        "",
    ],
)
def test_decode_raw_writes_the_exact_stored_bytes(
    tmp_path: Path, keyring: Keyring, keyring_file: Path, value: str
) -> None:
    path = tmp_path / "v.bin"
    path.write_bytes(seal(value, key="k", keyring=keyring))
    result = run("decode", "--raw", path, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == value.encode("utf-8", "surrogatepass")


def test_decode_raw_bytes_value(tmp_path: Path, keyring: Keyring, keyring_file: Path) -> None:
    value = bytes(range(256)) * 40  # a binary serializer's output (pickle, msgpack)
    path = tmp_path / "b.bin"
    path.write_bytes(seal(value, key="k", keyring=keyring))
    raw = run("decode", "--raw", path, "--keyring", keyring_file)
    assert raw.exit_code == 0 and raw.stdout_bytes == value
    pretty = run("decode", path, "--keyring", keyring_file)  # binary to a terminal: refused
    assert_one_clean_error(pretty, str(path), "binary value", "--raw", status=2)
    as_json = run("decode", "--json", path, "--keyring", keyring_file)
    record = json.loads(as_json.stdout)
    assert record["value_type"] == "bytes" and base64.b64decode(record["value"]) == value


def test_decode_from_stdin(sealed_file: Path, keyring_file: Path) -> None:
    result = run("decode", "-", "--keyring", keyring_file, stdin=sealed_file.read_bytes())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == RESULT


def test_decode_meta_shows_the_header_not_keys(
    sealed_file: Path, keyring: Keyring, keyring_file: Path
) -> None:
    result = run("decode", "--meta", sealed_file, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    head = result.stderr  # the header on stderr: stdout is the value alone (| jq works)
    assert f"sealed for  {KEY}" in head and "KEK         k1 (local wrap)" in head
    assert json.loads(result.stdout) == RESULT
    for material in key_material(keyring):
        assert material not in result.output


def test_decode_json_lines(
    tmp_path: Path, sealed_file: Path, keyring: Keyring, keyring_file: Path
) -> None:
    text = tmp_path / "text.bin"
    text.write_bytes(seal("not json", key="t", keyring=keyring))
    result = run("decode", "--json", "--meta", sealed_file, text, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["source"] == str(sealed_file)
    assert first["value_type"] == "json" and first["value"] == RESULT
    assert first["meta"]["kek_id"] == "k1" and first["meta"]["key"] == KEY
    assert first["meta"]["payload_size"] == len(json.dumps(RESULT).encode())
    assert second["value_type"] == "text" and second["value"] == "not json"


def test_decode_many_sources_keeps_going_past_failures(
    tmp_path: Path, sealed_file: Path, keyring_file: Path
) -> None:
    plaintext = tmp_path / "legacy.json"
    plaintext.write_text(json.dumps(RESULT))
    missing = tmp_path / "missing.bin"
    result = run("decode", sealed_file, plaintext, missing, sealed_file, "--keyring", keyring_file)
    assert result.exit_code == 3  # plaintext found outranks a missing file (2)
    assert result.stdout.count(f"==> {sealed_file} <==") == 2
    assert error_lines(result) == [
        f"Error: {plaintext}: not an envelope (no envelope magic: plaintext or another format)",
        f"Error: {missing}: cannot read file: No such file or directory",
    ]
    assert "Traceback" not in result.output


# -- decode: refusals --------------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    "where",
    ["version", "sealed key", "kek slot", "wrapped key", "payload", "tag", "truncated"],
)
def test_decode_tampered_file(
    tmp_path: Path, sealed_file: Path, keyring_file: Path, where: str
) -> None:
    data = sealed_file.read_bytes()
    header_size = int.from_bytes(data[5:7], "big")
    tampered = {
        "version": lambda: _flip(data, 4),
        "sealed key": lambda: data.replace(KEY.encode(), KEY.replace("4b1f", "4b1e").encode()),
        "kek slot": lambda: data.replace(b"\x01\x02k1", b"\x01\x02k2", 1),
        "wrapped key": lambda: _flip(data, header_size - 3),
        "payload": lambda: _flip(data, header_size + 2),
        "tag": lambda: _flip(data, len(data) - 1),
        "truncated": lambda: data[:-20],
    }[where]()
    assert tampered != data
    path = tmp_path / "tampered.bin"
    path.write_bytes(tampered)
    result = run("decode", path, "--keyring", keyring_file)
    assert_one_clean_error(result, str(path))


def test_decode_with_the_wrong_keyring(
    tmp_path: Path, sealed_file: Path, keyring_file: Path
) -> None:
    same_id = tmp_path / "other.json"
    Keyring.generate("k1").to_file(same_id)  # same KEK id, other material
    line = assert_one_clean_error(
        run("decode", sealed_file, "--keyring", same_id), str(sealed_file), "integrity", "'k1'"
    )
    assert "wrong key material" in line
    other_id = tmp_path / "other-id.json"
    Keyring.generate("k9").to_file(other_id)
    assert_one_clean_error(
        run("decode", sealed_file, "--keyring", other_id),
        str(sealed_file),
        "KEK 'k1' is not in this keyring (it holds 'k9')",
    )


def test_decode_under_a_retired_key(
    sealed_file: Path, keyring: Keyring, keyring_file: Path
) -> None:
    from celery_s3_envelope import KeyState, LocalKey

    rotated = keyring.with_entry(LocalKey("k2", os.urandom(32), KeyState.ACTIVE), activate=True)
    rotated.with_state("k1", KeyState.RETIRED).to_file(keyring_file)
    assert_one_clean_error(
        run("decode", sealed_file, "--keyring", keyring_file), str(sealed_file), "retired"
    )


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (json.dumps(RESULT).encode(), 3),  # plaintext found
        (b"", 3),
        (b"\xe5CS", 3),
        (b"\xe5CSE\x09\x00\x10" + b"\x00" * 40, 1),  # an envelope this release cannot read
    ],
    ids=["celery-json", "empty", "short-magic", "future-version"],
)
def test_decode_of_what_is_not_an_envelope(
    tmp_path: Path, keyring_file: Path, content: bytes, status: int
) -> None:
    path = tmp_path / "object"
    path.write_bytes(content)
    result = run("decode", path, "--keyring", keyring_file)
    assert_one_clean_error(result, str(path), status=status)


def test_decode_needs_a_keyring(
    sealed_file: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEFAULT_ENV_VAR, raising=False)
    result = run("decode", sealed_file)
    assert result.exit_code == 2  # a configuration error
    assert error_lines(result) == [
        f"Error: no keyring: pass --keyring PATH (or set {DEFAULT_ENV_VAR})"
    ]
    monkeypatch.setenv(DEFAULT_ENV_VAR, json.dumps(keyring.to_dict()))
    result = run("decode", sealed_file)
    assert result.exit_code == 0 and json.loads(result.stdout) == RESULT


def test_decode_with_an_unreadable_keyring(tmp_path: Path, sealed_file: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "keys": [{"id": "k1", "key": "c2VjcmV0IG1hdGVyaWFs"')
    broken.chmod(0o600)
    result = run("decode", sealed_file, "--keyring", broken)
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("Error: keyring: ") and "c2VjcmV0" not in result.output


def test_decode_warns_about_a_readable_keyring(sealed_file: Path, keyring_file: Path) -> None:
    keyring_file.chmod(0o644)
    result = run("decode", sealed_file, "--keyring", keyring_file)
    assert result.exit_code == 0
    (line,) = error_lines(result)
    assert line.startswith("Warning: keyring file") and "chmod 600" in line


def test_usage_errors(sealed_file: Path, keyring_file: Path) -> None:
    assert run("decode", "--keyring", keyring_file).exit_code == 2  # no source, no bucket
    raw_many = run("decode", "--raw", sealed_file, sealed_file, "--keyring", keyring_file)
    assert raw_many.exit_code == 2 and "--out" in raw_many.stderr
    assert run("decode", "--raw", "--json", sealed_file, "--keyring", keyring_file).exit_code == 2
    assert run("decode", "-", "-", "--keyring", keyring_file).exit_code == 2
    with_bucket = run("decode", sealed_file, "--bucket", "b", "--keyring", keyring_file)
    assert with_bucket.exit_code == 2 and "no SOURCE" in with_bucket.stderr


def test_decode_prints_text_values_with_escapes_shown_and_raw_byte_for_byte(
    tmp_path: Path, keyring: Keyring, keyring_file: Path
) -> None:
    """A text value is printed as it is, but for the control characters a terminal would act
    on (shown escaped, as every string read from an object is); --raw writes it byte for byte."""
    value = "not JSON: \x1b[31m red \udc80 \u2603\n\tsecond line\x9b2J"
    path = tmp_path / "t.bin"
    path.write_bytes(seal(value, key="t", keyring=keyring))
    result = run("decode", path, path, "--keyring", keyring_file)
    assert result.exit_code == 0
    shown = "not JSON: \\x1b[31m red \\xed\\xb2\\x80 \u2603\n\tsecond line\\x9b2J"
    expected = shown.encode("utf-8", "surrogatepass") + b"\n"
    assert result.stdout_bytes == (f"==> {path} <==\n".encode() + expected) * 2
    raw = run("decode", "--raw", path, "--keyring", keyring_file)
    assert raw.exit_code == 0 and raw.stdout_bytes == value.encode("utf-8", "surrogatepass")


# -- decode --out ------------------------------------------------------------------------------


def test_decode_out_writes_one_private_file_per_source(
    tmp_path: Path, sealed_file: Path, keyring: Keyring, keyring_file: Path
) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    same_name = other_dir / sealed_file.name
    same_name.write_bytes(seal('{"other": 1}', key="x", keyring=keyring))
    out = tmp_path / "decoded"
    result = run("decode", sealed_file, same_name, "--out", out, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["result.bin-2.json", "result.bin.json"]
    assert json.loads((out / "result.bin.json").read_text()) == RESULT
    assert json.loads((out / "result.bin-2.json").read_text()) == {"other": 1}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SECRET not in result.output  # values go to the files only
    assert f"{sealed_file} -> {out / 'result.bin.json'}" in result.stdout


def test_decode_out_replaces_a_planted_symlink_without_following_it(
    tmp_path: Path, sealed_file: Path, keyring_file: Path
) -> None:
    """The output file is written to a new private file and renamed into place: a symlink
    planted at its name is replaced, and the file it points to is never written."""
    out = tmp_path / "decoded"
    out.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (out / "result.bin.json").symlink_to(victim)
    result = run("decode", sealed_file, "--out", out, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "untouched"
    written = out / "result.bin.json"
    assert not written.is_symlink() and json.loads(written.read_text()) == RESULT
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["result.bin.json"]  # no temporary left


def test_decode_out_raw(tmp_path: Path, sealed_file: Path, keyring_file: Path) -> None:
    out = tmp_path / "raw"
    result = run("decode", "--raw", sealed_file, "--out", out, "--keyring", keyring_file)
    assert result.exit_code == 0, result.output
    assert (out / "result.bin.json").read_bytes() == json.dumps(RESULT).encode()


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_needs_no_keyring(
    tmp_path: Path, sealed_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEFAULT_ENV_VAR, raising=False)
    big = tmp_path / "big.bin"
    big.write_bytes(seal(json.dumps([RESULT] * 50), key="big", keyring=Keyring.generate("k7")))
    result = run("inspect", sealed_file, big)
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["KEK", "KIND", "ORIGINAL", "STORED", "COMPRESSION", "SOURCE"]
    assert first.split()[:2] == ["k1", "text"] and f"(sealed for {KEY})" in first
    assert second.split()[0] == "k7" and "zstd" in second
    assert SECRET not in result.output
    assert result.stderr == (
        "headers only, not authenticated: decode or scan --verify opens each envelope\n"
        "2 sealed, 0 failed\n"
    )


def test_inspect_json(sealed_file: Path) -> None:
    result = run("inspect", "--json", sealed_file)
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    size = sealed_file.stat().st_size
    assert record == {
        "source": str(sealed_file),
        "sealed": True,
        "format_version": 1,
        "suite": "AES256GCM_HKDF_SHA256_COMMIT",
        "key": KEY,
        "kek_id": "k1",
        "wrap_method": "local",
        "payload_kind": "text",
        "compression": record["compression"],
        "payload_size": len(json.dumps(RESULT).encode()),
        "stored_size": size - record["header_size"] - 16,
        "header_size": record["header_size"],
        "object_size": size,
        "authenticated": False,  # a header read without a key proves nothing
    }


def test_inspect_flags_plaintext(tmp_path: Path, sealed_file: Path) -> None:
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(RESULT))
    result = run("inspect", "--json", sealed_file, legacy)
    assert result.exit_code == 3  # plaintext found
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sealed"] for r in records] == [True, False]
    assert records[1]["source"] == str(legacy) and "not an envelope" in records[1]["error"]
    assert SECRET not in result.output


# -- the command line as a whole ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["decode"],
        ["inspect"],
        ["keys"],
        ["keys", "generate"],
        ["keys", "add"],
        ["keys", "activate"],
        ["keys", "retire"],
        ["keys", "list"],
        ["demo"],
    ],
)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and "celery-s3-envelope" in result.stdout


def test_offline_decode_imports_neither_celery_nor_boto3(
    tmp_path: Path, sealed_file: Path, keyring_file: Path
) -> None:
    """The tool people use years later: a real process, with celery, boto3 and botocore
    unimportable and no AWS configuration, decodes a file."""
    script = (
        "import sys\n"
        "for name in ('celery', 'boto3', 'botocore', 'kombu'):\n"
        "    sys.modules[name] = None\n"
        "from celery_s3_envelope.cli import main\n"
        "sys.argv = ['celery-s3-envelope', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CELERY"))}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    done = subprocess.run(
        [sys.executable, "-c", script, "decode", "--meta", sealed_file, "--keyring", keyring_file],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert KEY in done.stderr.decode() and json.loads(done.stdout.decode()) == RESULT
