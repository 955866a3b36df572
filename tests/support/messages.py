"""Task messages as kombu's filesystem transport keeps them (``support.broker``): read, scanned for
plaintext, and written back changed (the tampering tests).

A message file is kombu's JSON of the message: headers and properties in clear, the body base64
encoded; so a scan for plaintext must decode the body, or a plaintext JSON body would pass.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic
from typing import Any

from celery import Celery
from celery import _state as celery_state


def message_files(folder: Path, queue: str) -> list[Path]:
    return sorted(folder.glob(f"*.{queue}.msg"))


def read_message(path: Path) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(path.read_text())
    return message


def body_of(message: dict[str, Any]) -> bytes:
    assert message["properties"]["body_encoding"] == "base64"
    return base64.b64decode(message["body"])


def put_message(folder: Path, queue: str, message: dict[str, Any], body: bytes) -> None:
    """``message`` with ``body``, delivered to ``queue`` (atomically, as ``support.broker``)."""
    message = json.loads(json.dumps(message))
    message["body"] = base64.b64encode(body).decode()
    message["properties"]["delivery_info"]["routing_key"] = queue
    name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
    partial = (
        folder / f".{uuid.uuid4().hex}.partial"
    )  # kombu 5.3 takes any name holding ".celery.msg"
    partial.write_text(json.dumps(message))
    os.replace(partial, folder / name)


def readable_text(path: Path) -> str:
    """Everything a broker file says, its message bodies decoded: what a scan must search."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", "replace")
    try:
        message = json.loads(raw)
        text += "\n" + body_of(message).decode("utf-8", "replace")
    except (ValueError, KeyError, TypeError, AssertionError):
        pass
    return text


@contextmanager
def current(app: Celery) -> Iterator[Celery]:
    """``app`` as Celery's current app for the block (the tests' apps are made not current)."""
    before = celery_state._tls.current_app
    app.set_current()
    try:
        yield app
    finally:
        celery_state._tls.current_app = before
