"""Bad input: arbitrary, mutated, truncated and extended envelopes through ``unseal``,
``inspect`` and the CLI's ``decode``. Only ``EnvelopeError`` subclasses (CLI: exit 1 and one
line), each case bounded in time (hypothesis deadline) and in memory (tracemalloc).

The fast tier runs 5,000 cases per target in ``make test``; the slow tier (``make test-all``)
100,000.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope as cli

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
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(source) in lines[0], lines
    assert "Traceback" not in result.output
