"""Untrusted text on a terminal: object keys, KEK ids, header fields and reasons quoting them can
be forged by anyone who can write the bucket, so every one is shown with its control characters
escaped (ESC and CSI sequences, carriage returns, bidirectional overrides), on a terminal and in
a file alike. ``--json`` output stays valid JSON with the same characters escaped."""

from __future__ import annotations

import json
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_CONTROL_BUT_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


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
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
