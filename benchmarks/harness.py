"""A small interleaved benchmark harness: machines here are shared and noisy.

Each comparison runs its contenders in alternating order, round after round, so that a burst of
load from a neighbour hits them alike; the headline is the median of the per-round ratios, with
the quartiles as spread. (pytest-benchmark times one benchmark after another, which on a shared
machine turns neighbours' load into false ratios; hence this.)
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    name: str
    per_call: list[float] = field(default_factory=list)  # seconds, one figure per round

    @property
    def median(self) -> float:
        return statistics.median(self.per_call)

    def quartiles(self) -> tuple[float, float]:
        q = statistics.quantiles(self.per_call, n=4)
        return q[0], q[2]


@dataclass
class Ratio:
    name: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quartiles(self) -> tuple[float, float]:
        q = statistics.quantiles(self.values, n=4)
        return q[0], q[2]


def _calibrate(func: Callable[[], Any], target: float) -> int:
    iterations = 1
    while True:
        started = time.perf_counter()
        for _ in range(iterations):
            func()
        elapsed = time.perf_counter() - started
        if elapsed >= target or iterations >= 1 << 20:
            return max(1, int(iterations * target / max(elapsed, 1e-9)))
        iterations *= 4


def interleave(
    contenders: dict[str, Callable[[], Any]], *, rounds: int = 25, round_time: float = 0.02
) -> dict[str, Timing]:
    """Time every contender once per round, in a shuffled order each round."""
    iterations = {name: _calibrate(func, round_time) for name, func in contenders.items()}
    timings = {name: Timing(name) for name in contenders}
    order = list(contenders)
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            func, n = contenders[name], iterations[name]
            started = time.perf_counter()
            for _ in range(n):
                func()
            timings[name].per_call.append((time.perf_counter() - started) / n)
    return timings


def ratio(timings: dict[str, Timing], numerator: str, denominator: str) -> Ratio:
    """Per-round ratios (paired within each round), robust to drift across rounds."""
    pairs = zip(timings[numerator].per_call, timings[denominator].per_call, strict=True)
    return Ratio(f"{numerator} / {denominator}", [a / b for a, b in pairs])


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Goal:
    name: str
    value: float
    target: float
    at_most: bool = True  # True: value <= target; False: value >= target

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    def line(self) -> str:
        sign = "≤" if self.at_most else "≥"
        status = "met" if self.met else "missed"
        return f"goal {self.name}: {self.value:.2f} (target {sign} {self.target}) {status}"
