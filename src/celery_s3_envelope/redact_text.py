"""The text transforms behind ``envelope_redact``: what Celery prints about a task, minus values.

They work on the text Celery produced, not on the objects, because text is all the worker's main
process receives from a pool child (``saferepr`` of the result, the formatted traceback); working
from the same input, a task's log line and its event carry the same marker. Tracebacks are parsed
fail-closed: only lines this process can check against its own code (frames, their source,
exception types) or fixed text (headers, carets) are kept.
"""

from __future__ import annotations

import builtins
import functools
import linecache
import re
import sys

from celery.app.task import Task  # type: ignore[import-untyped]

__all__ = [
    "REDACTED",
    "exception_summary",
    "is_result_marker",
    "result_marker",
    "traceback_summary",
]

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
_FRAME = re.compile(r'  File "([^"]*)", line ([0-9]{1,9}), in (\S+)')
_DEFINITION = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)", re.MULTILINE)
_STATEMENT_LINES = 30
"""How far a statement's later lines may stand below the line a frame names."""
_SOURCE = re.compile(r"    \S.*")
_CARETS = re.compile(r" +[~^][ ~^]*")
_REPEATED = re.compile(r"  \[Previous line repeated [0-9]+ more times?\]")
REPEATED = "  [Previous line repeated more times]"
"""How a repeat line is shown: its count is text a message could have written."""


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


def is_result_marker(value: object) -> bool:
    """``value`` is a marker ``result_marker`` made (already redacted: never marked twice)."""
    return isinstance(value, str) and value.startswith("<sealed: ")


def exception_summary(text: str) -> str:
    """``ValueError(<redacted>)`` for an exception's repr (``ValueError: <redacted>`` for its
    ``Type: message`` form): the type stays, the message goes."""
    call = _CALL.match(text)
    if call and _names_an_exception(call.group(1)):
        name = call.group(1)
        return text if text == f"{name}()" else f"{name}({REDACTED})"
    line = _EXCEPTION_LINE.fullmatch(text.split("\n", 1)[0])
    if line and "\n" not in text and _names_an_exception(line.group(1)):
        return line.group(1) if line.group(2) is None else f"{line.group(1)}: {REDACTED}"
    return REDACTED


def _names_an_exception(name: str) -> bool:
    """``name`` (as a repr shows a type: its bare qualified name) is an exception class of some
    module this process has loaded; a custom ``__repr__`` could print anything else."""
    if _is_exception_type(name):
        return True
    parts = name.split(".")
    for module in list(sys.modules.values()):
        found: object = module
        try:  # a module's own __getattr__ may do anything: only plain attributes count
            for part in parts:
                found = vars(found).get(part) if hasattr(found, "__dict__") else None
        except Exception:  # noqa: S112 (an odd module object: not the one)
            continue
        if isinstance(found, type) and issubclass(found, BaseException):
            return True
    return False


def traceback_summary(text: str) -> str:
    """A formatted traceback with every exception message removed, whatever lines it contains.

    A message can hold lines that look like a traceback (a chain header, ``File`` lines, source
    lines), and text alone cannot tell them from real ones. So every line kept is checked
    against what this process can see: a ``File "path", line N, in name`` line only when that
    file exists here and defines ``name``; a source line only when it is that file's code at
    line N; an exception line only as the type's name, and only when that type is an exception
    class this process has loaded (``Type: <redacted>``). Fixed lines (the ``Traceback`` and
    chain headers, carets, "Previous line repeated") stay. Anything else (messages, notes, a
    ``SyntaxError``'s text, exception groups, frames of code this process cannot read) is
    dropped, so no line of a message reaches the output.
    """
    kept: list[str] = []
    frame: tuple[str, int] | None = None  # the last kept frame, whose source may follow
    source_kept = False
    recognised = False
    for line in text.splitlines():
        if line == _HEADER:
            kept.append(line)
        elif line in _CHAIN_HEADERS:
            kept += ["", line, ""]
        elif found := _FRAME.fullmatch(line):
            path, number, name = found.group(1), int(found.group(2)), found.group(3)
            frame = (path, number) if _code_defines(path, name, number) else None
            source_kept = False
            if frame is not None:
                kept.append(line)
            continue
        elif frame is not None and not source_kept and _SOURCE.fullmatch(line):
            if _is_source(frame, line.strip()):
                kept.append(line)
                source_kept = True
                continue
        elif source_kept and _CARETS.fullmatch(line):
            kept.append(line)
            continue
        elif _REPEATED.fullmatch(line) or line == REPEATED:
            kept.append(REPEATED)
        elif (exception := _EXCEPTION_LINE.fullmatch(line)) and _is_exception_type(
            exception.group(1)
        ):
            name, message = exception.groups()
            kept.append(name if message is None else f"{name}: {REDACTED}")
            recognised = True
        frame, source_kept = None, False
    if not recognised:
        kept.append(REDACTED)
    return "\n".join(_squeezed(kept)) + ("\n" if text.endswith("\n") else "")


def _squeezed(lines: list[str]) -> list[str]:
    """No blank line at the start, none doubled (dropped lines leave no gaps)."""
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return out


_ANONYMOUS = frozenset(
    {"<module>", "<lambda>", "<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"}
)


@functools.lru_cache(maxsize=256)
def _defined_names(path: str) -> frozenset[str]:
    """The function and class names a source file defines (empty when it cannot be read)."""
    return frozenset(_DEFINITION.findall("".join(linecache.getlines(path))))


_loaded: tuple[int, frozenset[str]] = (0, frozenset())


def _loaded_sources() -> frozenset[str]:
    """The source files of the modules this process has imported: the only files a traceback
    line may send the redaction to read (a message could name ``/dev/zero`` or a FIFO)."""
    global _loaded
    count = len(sys.modules)
    if _loaded[0] != count:
        files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
        _loaded = (count, frozenset(f for f in files if isinstance(f, str) and f.endswith(".py")))
    return _loaded[1]


def _code_defines(path: str, name: str, number: int) -> bool:
    """``path`` is an imported module's source, ``number`` one of its lines, and it defines
    ``name`` (or ``name`` is a module-level or anonymous code object)."""
    if path not in _loaded_sources():
        return False
    lines = linecache.getlines(path)
    return 0 < number <= len(lines) and (name in _ANONYMOUS or name in _defined_names(path))


def _is_source(frame: tuple[str, int], text: str) -> bool:
    """``text`` is the code at the frame's line, or of the statement starting there."""
    path, number = frame
    lines = linecache.getlines(path)
    return any(
        line.strip() == text for line in lines[max(number - 1, 0) : number + _STATEMENT_LINES]
    )


def _is_exception_type(name: str) -> bool:
    """``name`` as a traceback prints a type: a builtin (or ``__main__``) exception, or
    ``module.Qualname`` of an exception class in a module this process has already imported
    (nothing is imported here)."""
    parts = name.split(".")
    found: object = None
    if len(parts) == 1:
        found = getattr(builtins, name, None) or getattr(sys.modules.get("__main__"), name, None)
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        found = module
        for part in parts[split:]:
            found = getattr(found, part, None)
        break
    return isinstance(found, type) and issubclass(found, BaseException)
