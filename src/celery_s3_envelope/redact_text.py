"""The text transforms behind ``envelope_redact``: what Celery prints about a task, minus values.

They work on the text Celery produced, not on the objects, because text is all the worker's main
process receives from a pool child (``saferepr`` of the result, the formatted traceback); working
from the same input, a task's log line and its event carry the same marker. Tracebacks are parsed
fail-closed: only lines recognised as frames, frame source or chain headers are kept.
"""

from __future__ import annotations

import re

from celery.app.task import Task  # type: ignore[import-untyped]

__all__ = ["REDACTED", "exception_summary", "result_marker", "traceback_summary"]

REDACTED = "<redacted>"
REPR_LIMIT: int = Task.resultrepr_maxsize
"""Celery's default cut-off for the repr of a result; a repr that long was truncated."""

_NAME = r"[A-Za-z_][\w.]*"
_CALL = re.compile(rf"({_NAME})\(")
_EXCEPTION_LINE = re.compile(rf"({_NAME})(:.*)?")
_OBJECT = re.compile(rf"<({_NAME})[ >]")
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?(\d+\.\d*(e[-+]?\d+)?|\d+e[-+]?\d+|inf|nan)")
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("b'", "bytes"),
    ('b"', "bytes"),
    ("'", "str"),
    ('"', "str"),
    ("[", "list"),
    ("(", "tuple"),
)
_CONSTANTS = {"None": "NoneType", "True": "bool", "False": "bool"}

_HEADER = "Traceback (most recent call last):"
_CHAIN_HEADERS = frozenset(
    {
        "The above exception was the direct cause of the following exception:",
        "During handling of the above exception, another exception occurred:",
    }
)
_FRAME = re.compile(r'  File "[^"]*", line \d+, in \S+')
_SOURCE = re.compile(r"    \S.*")
_CARETS = re.compile(r" +[~^][ ~^]*")
_REPEATED = re.compile(r"  \[Previous line repeated \d+ more times?\]")


def _type_of_repr(text: str) -> str:
    """The type a ``saferepr`` text shows: exact for builtins, the class name for ``Name(...)``
    and ``<Name object ...>`` reprs, else ``object``."""
    if text in _CONSTANTS:
        return _CONSTANTS[text]
    if _INT.fullmatch(text):
        return "int"
    if _FLOAT.fullmatch(text):
        return "float"
    if text.startswith("{"):
        return "dict" if text == "{}" or ": " in text else "set"
    for prefix, name in _PREFIXES:
        if text.startswith(prefix):
            return name
    found = _CALL.match(text) or _OBJECT.match(text)
    return found.group(1).rpartition(".")[2] if found else "object"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def result_marker(text: str, limit: int = REPR_LIMIT) -> str:
    """``<sealed: dict, 312 B>`` for Celery's repr of a result: its type and its size.

    The size is the repr's, in UTF-8; Celery cuts reprs at ``limit`` characters, so one that long
    shows as ``>1.0 KiB`` (the value is larger).
    """
    size = _size(len(text.encode("utf-8", "surrogatepass")))
    return f"<sealed: {_type_of_repr(text)}, {'>' if len(text) >= limit else ''}{size}>"


def exception_summary(text: str) -> str:
    """``ValueError(<redacted>)`` for an exception's repr (``ValueError: <redacted>`` for its
    ``Type: message`` form): the type stays, the message goes."""
    call = _CALL.match(text)
    if call:
        name = call.group(1)
        return text if text == f"{name}()" else f"{name}({REDACTED})"
    line = _EXCEPTION_LINE.fullmatch(text.split("\n", 1)[0])
    if line and "\n" not in text:
        return line.group(1) if line.group(2) is None else f"{line.group(1)}: {REDACTED}"
    return REDACTED


def traceback_summary(text: str) -> str:
    """A formatted traceback with every exception message removed.

    Kept: the ``Traceback`` and chaining headers, each frame's ``File ..., line N, in name`` line
    with its source line and carets, and each exception's type (``Type: <redacted>``). Anything
    else, multi-line messages, notes, a ``SyntaxError``'s text, exception groups, is dropped.
    """
    kept: list[str] = []
    state = "start"  # start | frames | frame (source may follow) | source (carets may) | message
    recognised = False
    for line in text.splitlines():
        if state == "message":
            if line in _CHAIN_HEADERS:
                kept += ["", line, ""]
                state = "start"
            continue
        if state == "start":
            if line == _HEADER:
                kept.append(line)
                state = "frames"
                continue
            if not line.strip():
                continue
        elif _FRAME.fullmatch(line):
            kept.append(line)
            state = "frame"
            continue
        elif state == "frame" and _SOURCE.fullmatch(line):
            kept.append(line)
            state = "source"
            continue
        elif (state == "source" and _CARETS.fullmatch(line)) or _REPEATED.fullmatch(line):
            kept.append(line)
            continue
        elif line.startswith(" "):
            state = "frames"  # unrecognised and indented: dropped, with any source under it
            continue
        exception = _EXCEPTION_LINE.fullmatch(line)
        if exception:
            name, message = exception.groups()
            kept.append(name if message is None else f"{name}: {REDACTED}")
            recognised = True
        state = "message"
    if not recognised:
        kept.append(REDACTED)
    return "\n".join(kept) + ("\n" if text.endswith("\n") else "")
