"""Split the key space under a base path into shards, without listing it first.

Celery's result keys are ``<base_path><global_keyprefix><kind prefix><task id>`` and a task id
is a UUID (hex), so each kind's key space splits by the next hex characters into contiguous key
ranges. A shard lists only its own range (ListObjectsV2 with ``Prefix`` / ``StartAfter``) and
stops at its upper bound. Keys outside the three Celery prefixes (anything else under the base
path) fall in the *catch-all* shards: the gaps before, between and after the Celery prefixes,
listed with the Celery keys filtered out. Every key under the base path lands in exactly one
shard (``Shard.contains``); tests/test_shards.py proves it over generated key sets.

A range is ``start_after < key <= end``: the lower bound is exclusive like S3's ``StartAfter``,
and the upper bound inclusive, so a key equal to a boundary has exactly one home.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from .celery_keys import celery_prefixes

if TYPE_CHECKING:
    from ..store import ObjectInfo, S3Store

BOUNDARY_DIGITS = 4
"""Hex digits of a boundary: up to 65,536 ranges per prefix."""
MAX_CHAR = "\U0010ffff"
"""Sorts after every other character: ``P + MAX_CHAR`` is past every key S3 would hold under P
(a longer key made of MAX_CHAR only is filtered by the catch-all rather than lost)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """Keys under ``prefix`` with ``start_after < key <= end`` (None: open), minus any key under
    one of ``exclude`` (the Celery prefixes, for the catch-all shards)."""

    index: int
    prefix: str
    start_after: str | None = None
    end: str | None = None
    exclude: tuple[str, ...] = ()

    @property
    def catch_all(self) -> bool:
        return bool(self.exclude)

    def contains(self, key: str) -> bool:
        return (
            key.startswith(self.prefix)
            and (self.start_after is None or key > self.start_after)
            and (self.end is None or key <= self.end)
            and not any(key.startswith(excluded) for excluded in self.exclude)
        )

    def describe(self) -> str:
        """The range as a report shows it."""
        low = repr(self.start_after) if self.start_after is not None else "start"
        high = repr(self.end) if self.end is not None else "end"
        kind = "catch-all " if self.catch_all else ""
        return f"{kind}{self.prefix!r} ({low}, {high}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prefix": self.prefix,
            "start_after": self.start_after,
            "end": self.end,
            "exclude": list(self.exclude),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Shard:
        return cls(
            int(document["index"]),
            str(document["prefix"]),
            document.get("start_after"),
            document.get("end"),
            tuple(document.get("exclude") or ()),
        )

    def objects(self, store: S3Store, *, resume_after: str | None = None) -> Iterator[ObjectInfo]:
        """This shard's objects in key order, after ``resume_after`` when given (a checkpoint)."""
        start = self.start_after
        if resume_after is not None and (start is None or resume_after > start):
            start = resume_after
        for info in store.list(self.prefix, start_after=start):
            if self.end is not None and info.key > self.end:
                return
            if not any(info.key.startswith(excluded) for excluded in self.exclude):
                yield info


def hex_boundaries(parts: int) -> list[str]:
    """``parts - 1`` increasing hex strings splitting the UUID space into equal ranges."""
    if not 1 <= parts <= 16**BOUNDARY_DIGITS:
        raise ValueError(f"parts must be between 1 and {16**BOUNDARY_DIGITS}")
    space = 16**BOUNDARY_DIGITS
    return [format(i * space // parts, f"0{BOUNDARY_DIGITS}x") for i in range(1, parts)]


def plan_shards(
    base_path: str,
    global_keyprefix: str = "",
    parts: int = 16,
    *,
    prefixes: Sequence[str] | None = None,
) -> list[Shard]:
    """Shards in key order: ``parts`` ranges under each Celery prefix, and the catch-all gaps
    around them (``len(prefixes) + 1`` of them), so ``len(prefixes) * (parts + 1) + 1`` in all.

    ``prefixes`` (without the base path) default to ``celery_prefixes(global_keyprefix)``;
    the driver passes the backend's own, so the plan follows Celery's settings exactly."""
    kinds = sorted(base_path + p for p in (prefixes or celery_prefixes(global_keyprefix)))
    for first, second in pairwise(kinds):
        if second.startswith(first):
            raise ValueError(f"prefix {first!r} contains {second!r}")
    exclude = tuple(kinds)
    bounds = hex_boundaries(parts)
    shards: list[Shard] = []

    def add(prefix: str, start_after: str | None, end: str | None, catch_all: bool) -> None:
        shards.append(Shard(len(shards), prefix, start_after, end, exclude if catch_all else ()))

    previous: str | None = None
    for kind in kinds:
        add(base_path, previous, kind, catch_all=True)  # the gap before this prefix
        edges: list[str | None] = [None, *(kind + bound for bound in bounds), None]
        for low, high in pairwise(edges):
            add(kind, low, high, catch_all=False)
        previous = kind + MAX_CHAR
    add(base_path, previous, None, catch_all=True)  # the gap after the last prefix
    return shards
