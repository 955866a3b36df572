"""Untrusted text on a terminal: object keys, KEK ids, header fields and reasons quoting them can
be forged by anyone who can write the bucket, so every one is shown with its control characters
escaped (ESC and CSI sequences, carriage returns, bidirectional overrides, zero-width and tag
characters, bytes of a file name that are not UTF-8), on a terminal and in a file alike. A
backslash is shown as it is, so ``\\x1b`` typed into a key reads the same as an escaped ESC.
``--json`` output stays valid JSON with the same characters escaped."""

from __future__ import annotations

import json
import re
from typing import Any

_INVISIBLE = (
    "\x7f-\x9f"  # DEL, C1 controls (CSI among them)
    "\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff"  # bidi, zero-width
    "\ud800-\udfff"  # lone surrogates: undecodable bytes of a file name (surrogateescape)
    "\U000e0000-\U000e007f"  # tag characters
)
_CONTROL = re.compile(f"[\\x00-\\x1f{_INVISIBLE}]")
_CONTROL_BUT_LINES = re.compile(f"[\\x00-\\x08\\x0b-\\x1f{_INVISIBLE}]")
_JSON_UNSAFE = re.compile(f"[{_INVISIBLE}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def safe(text: object) -> str:
    """One line: every control character escaped, newlines and tabs included."""
    return _CONTROL.sub(_escape, str(text))


def safe_text(text: str) -> str:
    """A multi-line value (a decoded text result): control characters escaped but for line
    feeds and tabs, which keep their meaning."""
    return _CONTROL_BUT_LINES.sub(_escape, text)


def json_text(document: Any, **options: Any) -> str:
    """``json.dumps`` with non-ASCII text kept readable, and the characters JSON leaves raw that
    a terminal would act on (DEL, C1 controls, bidirectional overrides) as ``\\uXXXX``."""
    text = json.dumps(document, ensure_ascii=False, **options)
    return _JSON_UNSAFE.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)  # JSON spells astral characters as a pair
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
