"""No key in a traceback: an exception leaving the codec carries no frame that still holds one.

Error trackers (Sentry by default) record the local variables of every frame of a traceback,
chained exceptions included. The frames that derive, wrap and unwrap keys hold them as locals
(the DEK, the content key, a wrapping key, an intermediate key), and so do library frames below
them (``cryptography``'s key unwrap). ``scrubbed`` wraps each public entry point of the codec: an
exception leaving it has the locals of every finished frame below the entry point cleared
(``frame.clear()``), in its own traceback and in those of its ``__cause__`` / ``__context__``.
The traceback keeps its file names, line numbers and functions, so it still says where.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def clear_frames(exc: BaseException, *, keep: BaseException | None = None) -> None:
    """Clear the locals of every finished frame in ``exc``'s tracebacks, chain included, but
    not those of ``keep`` (the exception already being handled when the entry point was called:
    its frames are the caller's, not the codec's)."""
    seen: set[int] = {id(keep)} if keep is not None else set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        tb: TracebackType | None = current.__traceback__
        while tb is not None:
            with contextlib.suppress(RuntimeError):  # still executing: the entry point and above
                tb.tb_frame.clear()
            tb = tb.tb_next
        pending += [current.__cause__, current.__context__]


def scrubbed(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` whose exceptions leave no key material in the frames below it."""

    @functools.wraps(function)
    def entry(*args: P.args, **kwargs: P.kwargs) -> R:
        in_flight = sys.exception()
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            clear_frames(exc, keep=in_flight)
            raise

    return entry
