"""Bad input: arbitrary, mutated, truncated and extended envelopes through ``unseal``,
``inspect`` and the CLI's ``decode``. Only ``EnvelopeError`` subclasses (CLI: exit 1 and one
line per failed source), each case bounded in time (hypothesis deadline; for the CLI a timer
per source) and in memory (tracemalloc).

The fast tier runs 5,000 cases per target in ``make test``; the slow tier (``make test-all``)
100,000. The CLI's cases run as a user runs many files: one ``decode`` with many SOURCEs.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope as cli
from celery_s3_envelope.cli import sources as cli_sources
from celery_s3_envelope.envelope import Compression, PayloadKind
from celery_s3_envelope.pipeline import EncryptStage

KEY = "celery-task-meta-fuzz"
KEYRING = cse.Keyring.generate("k1")
SEEDS = [
    cse.seal("", key=KEY, keyring=KEYRING),
    cse.seal("x" * 2000, key=KEY, keyring=KEYRING),
    cse.seal(os.urandom(300), key=KEY, keyring=KEYRING),
]
LIMIT = 64 * 1024 * 1024


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Envelope-shaped garbage: a real envelope mutated, cut, extended, or with lying lengths."""
    base = bytearray(draw(st.sampled_from(SEEDS)))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=512))
    if kind == 1:
        for _ in range(draw(st.integers(1, 6))):
            base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
    elif kind == 2:
        base = base[: draw(st.integers(0, len(base)))]
    elif kind == 3:
        base += draw(st.binary(min_size=1, max_size=64))
    else:  # header length or payload size pointing anywhere, huge declared sizes
        struct.pack_into(">H", base, 5, draw(st.integers(0, 0xFFFF)))
        if draw(st.booleans()) and len(base) > 20:
            struct.pack_into(">Q", base, 10, draw(st.integers(0, 2**64 - 1)))
    return bytes(base)


def only_envelope_errors(data: bytes) -> None:
    for call in (
        lambda: cse.unseal(data, keyring=KEYRING, key=KEY),
        lambda: cse.unseal(data, keyring=KEYRING),
        lambda: cse.inspect(data),
    ):
        with contextlib.suppress(cse.EnvelopeError):
            call()


FAST = settings(max_examples=5000, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100_000, deadline=1000, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(hostile())
def test_fuzz_unseal_and_inspect(data: bytes) -> None:
    only_envelope_errors(data)


@pytest.mark.slow
@SLOW
@given(hostile())
def test_fuzz_unseal_and_inspect_slow_tier(data: bytes) -> None:
    only_envelope_errors(data)


def test_hostile_inputs_stay_within_memory_bounds() -> None:
    """The largest allocation while refusing hostile input is bounded by the input, not by
    what its header claims (the limit is 64 MiB; nothing near it is allocated)."""
    import random

    rng = random.Random(3)
    tracemalloc.start()
    try:
        for _ in range(2000):
            data = bytearray(rng.choice(SEEDS))
            struct.pack_into(">Q", data, 10, rng.choice([LIMIT, LIMIT - 1, 2**40, 2**63]))
            only_envelope_errors(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak


def expected_status(data: bytes) -> int:
    """What docs/cli.md's table says ``decode`` of ``data`` exits with, from the library's own
    verdict: 3 not an envelope, 1 any other refusal, 2 a binary value without --raw, else 0."""
    try:
        value = cse.unseal(data, keyring=KEYRING)
    except cse.NotAnEnvelope:
        return 3
    except cse.EnvelopeError:
        return 1
    return 2 if isinstance(value, bytes) else 0


@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=hostile())
def test_fuzz_cli_decode_exits_1_with_one_line(data: bytes, tmp_path: Path) -> None:
    keyring_path = tmp_path / "keys.json"
    if not keyring_path.exists():
        KEYRING.to_file(keyring_path)
    source = tmp_path / "object.bin"
    source.write_bytes(data)
    result = CliRunner().invoke(cli, ["decode", str(source), "--keyring", str(keyring_path)])
    if result.exit_code == 0:  # a mutation that left the envelope intact (e.g. same byte)
        return
    assert result.exit_code == expected_status(data), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(source) in lines[0], lines
    assert "Traceback" not in result.output


# -- the CLI's decode over many sources in one run ------------------------------------------

MARKER = "fuzz-plaintext-5c1e0b"
"""In every text value sealed below: it must never appear on stderr."""
ZSTD_TEXT = ('{"status": "SUCCESS", "result": "' + MARKER + '", "n": ' + "7, " * 400)[:2000]


def _zstd_frames() -> list[tuple[bytes, int]]:
    """zstd frames a KEK holder could seal, with the size each really expands to."""
    import zstandard

    text = ZSTD_TEXT.encode()
    good = zstandard.ZstdCompressor().compress(text)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    unsized = no_size.compress(text) + no_size.flush()
    # A bomb: one byte more than the limit, in a few kB (built in 1 MiB steps).
    bomb_size = LIMIT + 1
    streaming = zstandard.ZstdCompressor(level=1).compressobj(size=bomb_size)
    chunk = bytes(1 << 20)
    parts = [streaming.compress(chunk) for _ in range(bomb_size >> 20)]
    bomb = b"".join([*parts, streaming.compress(bytes(bomb_size & 0xFFFFF)), streaming.flush()])
    return [(good, len(text)), (unsized, len(text)), (bomb, bomb_size)]


FRAMES = _zstd_frames()
CLI_SEEDS = [*SEEDS, cse.seal(ZSTD_TEXT, key=KEY, keyring=KEYRING)]
CASE_SECONDS = 2.0
"""Wall-clock bound on one source (a timer interrupts a case that runs longer)."""
CLI_PEAK = 4 * 1024 * 1024
"""Peak traced allocation of a whole ``decode`` run over a batch: a small fraction of the
64 MiB limit, whatever sizes the inputs declare."""


def _edgy(rng: random.Random, low: int, high: int) -> int:
    """An integer in [low, high], at or next to an end a quarter of the time."""
    if rng.random() < 0.25:
        return rng.choice((low, high, min(low + 1, high), max(high - 1, low)))
    return rng.randint(low, high)


def _forged(rng: random.Random) -> bytes:
    """An envelope sealed correctly (only a KEK holder can) around a hostile zstd frame: the
    case that reaches the decompressor. Declared sizes at, around and far from the truth."""
    frame, true_size = rng.choice(FRAMES)
    cut = rng.randrange(4)
    if cut == 1:
        frame = frame[: rng.randrange(len(frame))]
    elif cut == 2:
        frame += rng.choice((frame, rng.randbytes(_edgy(rng, 1, 64))))
    elif cut == 3:
        changed = bytearray(frame)
        changed[rng.randrange(len(changed))] ^= rng.randint(1, 255)
        frame = bytes(changed)
    declared = rng.choice(
        (0, 1, true_size - 1, true_size, true_size + 1, LIMIT - 1, LIMIT, LIMIT + 1,
         2**63, 2**64 - 1, rng.randrange(2**64))
    )  # fmt: skip
    return EncryptStage().seal(
        frame,
        payload_kind=rng.choice((PayloadKind.TEXT, PayloadKind.BYTES)),
        compression=Compression.ZSTD,
        payload_size=declared,
        key=KEY,
        kek=KEYRING.active,
    )


def hostile_case(rng: random.Random) -> bytes:
    """What ``hostile()`` draws, from a seeded RNG (cheap enough for 100,000 cases), plus
    correctly sealed envelopes around hostile zstd frames (``_forged``)."""
    kind = rng.randrange(6)
    base = bytearray(rng.choice(CLI_SEEDS))
    if kind == 0:
        return rng.randbytes(_edgy(rng, 0, 512))
    if kind == 1:
        for _ in range(_edgy(rng, 1, 6)):
            base[rng.randrange(len(base))] = rng.randrange(256)
    elif kind == 2:
        base = base[: _edgy(rng, 0, len(base))]
    elif kind == 3:
        base += rng.randbytes(_edgy(rng, 1, 64))
    elif kind == 4:  # header length or payload size pointing anywhere, huge declared sizes
        struct.pack_into(">H", base, 5, _edgy(rng, 0, 0xFFFF))
        if rng.random() < 0.5 and len(base) > 20:
            struct.pack_into(">Q", base, 10, _edgy(rng, 0, 2**64 - 1))
    else:
        return _forged(rng)
    return bytes(base)


class CaseTimeout(BaseException):
    """A source ran past ``CASE_SECONDS``. Not an ``Exception``: the CLI cannot swallow it."""


@contextlib.contextmanager
def bounded_sources() -> Iterator[list[str]]:
    """Arm a ``CASE_SECONDS`` timer as ``decode`` starts each source (the moment it reads the
    file); a source still running when it fires raises ``CaseTimeout`` out of the run. Yields
    the sources in the order they were started."""
    started: list[str] = []
    read_local = cli_sources.read_local

    def timed_read(source: cli_sources.Source) -> bytes:
        started.append(source.name)
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        return read_local(source)

    def on_timer(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout(f"{started[-1]} still running after {CASE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, on_timer)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli_sources, "read_local", timed_read)
            yield started
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decode_batch(cases: list[bytes], folder: Path) -> None:
    """One ``decode`` over every case, each in its own file. The CLI's verdict on each source
    must be the library's: what ``unseal`` refuses gets exactly one ``Error: SOURCE: reason``
    line on stderr and nothing on stdout; what it opens is printed under its name (a binary
    value without --raw is the one other refusal). Exit 1 when any failed; no traceback, no
    plaintext on stderr; peak memory bounded."""
    keyring_path = folder / "keys.json"
    if not keyring_path.exists():
        KEYRING.to_file(keyring_path)
    paths = [str(folder / f"case-{n:05d}.bin") for n in range(len(cases))]
    for path, data in zip(paths, cases, strict=True):
        Path(path).write_bytes(data)
    with bounded_sources() as started:
        tracemalloc.start()
        try:
            result = CliRunner().invoke(cli, ["decode", *paths, "--keyring", str(keyring_path)])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert started == paths, "decode did not start every source once, in order"
    opened: dict[str, str | bytes] = {}  # the library's verdict (after the CLI's, which is timed)
    for path, data in zip(paths, cases, strict=True):
        with contextlib.suppress(cse.EnvelopeError):
            opened[path] = cse.unseal(data, keyring=KEYRING)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert MARKER not in result.stderr
    errors = result.stderr.splitlines()
    assert all(line.startswith("Error: ") for line in errors), errors
    failed = Counter(line.removeprefix("Error: ").split(": ", 1)[0] for line in errors)
    assert all(count == 1 for count in failed.values()), failed.most_common(3)
    printed = {
        line[4:-4]
        for line in result.stdout.splitlines()
        if line.startswith("==> ") and line.endswith(" <==")
    }
    binary = {path for path, value in opened.items() if isinstance(value, bytes)}
    assert set(failed) == (set(paths) - set(opened)) | (binary - printed)
    assert printed == set(opened) - set(failed)
    for line in errors:
        if line.removeprefix("Error: ").split(": ", 1)[0] in opened:
            assert "binary value" in line, line
    assert result.exit_code == max(map(expected_status, cases), default=0), result.exit_code
    assert peak < CLI_PEAK, f"peak {peak} bytes while decoding {len(cases)} hostile sources"


def run_cli_fuzz(tier: str, batches: int, per_batch: int, folder: Path) -> None:
    for batch in range(batches):
        rng = random.Random(f"cli-decode/{tier}/{batch}")  # reproducible: rerun the same cases
        decode_batch([hostile_case(rng) for _ in range(per_batch)], folder)


def test_fuzz_cli_decode_many_sources(tmp_path: Path) -> None:
    run_cli_fuzz("fast", 10, 500, tmp_path)  # 5,000 cases


@pytest.mark.slow
def test_fuzz_cli_decode_many_sources_slow_tier(tmp_path: Path) -> None:
    run_cli_fuzz("slow", 100, 1000, tmp_path)  # 100,000 cases
