"""The worker's side of the ``envelope`` serializer: the consumer's check of every task message.

``install_worker`` (called at ``worker_init`` by ``celery_command``) adds a consumer step that:

* puts every task strategy behind ``checked_strategy``: an unsealed body (while
  ``accept_content`` is only ``envelope``), an empty one, and a sealed body that does not open for
  its message's task id are refused through Celery's invalid-message path, before the pool sees
  them; a valid one missing its ``argsrepr`` / ``kwargsrepr`` gets markers;
* wraps ``create_task_handler`` so that a sealed message without ``task`` / ``id`` headers, and a
  clear one without a ``task`` header, are refused before Celery decodes them itself;
* makes Celery's handlers of refused, unknown and undecodable messages log a withheld body;

and adds a filter to ``celery.pool`` whose DEBUG ``TaskPool: Apply`` line would print the decoded
arguments. The pool child decodes the same bytes again, through ``messages.decode``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from .errors import EnvelopeError
from .messages import (
    CONTENT_TYPE,
    _ensure_connected,
    _expected,
    binding,
    only_envelope,
    uses_envelope,
)

__all__ = ["checked_strategy", "install_worker"]

WITHHELD = "<withheld by the envelope serializer: {} bytes>"
APPLY_WITHHELD = "<withheld: a sealed task's request>"


def _withhold(message: Any) -> str:
    """Nothing of a refused message's body or argument reprs reaches Celery's log; returns
    what the log may say of it (``_who``)."""
    body = message.body
    size = len(body) if isinstance(body, bytes | bytearray | str) else 0
    message.body = WITHHELD.format(size).encode()
    headers = message.headers
    if isinstance(headers, dict):
        for name in ("argsrepr", "kwargsrepr"):
            if name in headers:
                headers[name] = "<withheld>"
    return _who(message)


def _who(message: Any) -> str:
    from celery.utils.saferepr import saferepr  # type: ignore[import-untyped]

    headers = message.headers if isinstance(message.headers, dict) else {}
    return f"{saferepr(headers.get('task'), 200)}[{saferepr(headers.get('id'), 200)}]"


def _reason(exc: BaseException) -> str:
    """Why a body did not open: the envelope's error (kombu wraps it in ``DecodeError``), whose
    messages never hold plaintext or keys; of any other error, only its type."""
    for found in (exc, exc.__cause__, *(exc.args[:1] if exc.args else ())):
        if isinstance(found, EnvelopeError):
            return f"{type(found).__name__}: {found}"
    return type(exc).__name__


def checked_strategy(strategy: Callable[..., Any], envelope_only: bool) -> Callable[..., Any]:
    """``strategy`` behind the check of the worker's consumer (see the module's text)."""
    from celery.exceptions import InvalidTaskError  # type: ignore[import-untyped]
    from kombu.exceptions import ContentDisallowed

    def check(message: Any, *args: Any, **kwargs: Any) -> Any:
        if message.content_type != CONTENT_TYPE:
            if envelope_only:
                content_type = message.content_type
                who = _withhold(message)
                raise ContentDisallowed(
                    f"Refusing to deserialize untrusted content of type {content_type!r} "
                    f"(accept_content is ['envelope']): task message {who}, body withheld"
                )
            return strategy(message, *args, **kwargs)
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        body = message.body
        if not isinstance(task_id, str) or not isinstance(body, bytes | str) or not body:
            who = _withhold(message)
            raise InvalidTaskError(
                f"refused a sealed task message {who}: no task id header, or no body to open"
            )
        token = _expected.set(binding(task_id))
        try:
            payload = message.decode()  # cached: the strategy's message.payload reads this
        except Exception as exc:
            reason = _reason(exc)
            who = _withhold(message)
            raise InvalidTaskError(
                f"refused a sealed task message {who}: it does not open for this message ({reason})"
            ) from None
        finally:
            _expected.reset(token)
        _mark_reprs(headers, payload)
        return strategy(message, *args, **kwargs)

    check.envelope_checked = True  # type: ignore[attr-defined]
    return check


def _mark_reprs(headers: dict[str, Any], payload: Any) -> None:
    """``argsrepr`` / ``kwargsrepr`` markers where a message lacks them (removed on the way, or
    a publisher's own): Celery would otherwise log the decoded arguments' reprs in their place."""
    from celery.utils.saferepr import saferepr

    from .redact_text import is_result_marker, result_marker

    values = payload if isinstance(payload, list | tuple) and len(payload) == 3 else ((), {}, {})
    for name, value in (("argsrepr", values[0]), ("kwargsrepr", values[1])):
        if not is_result_marker(headers.get(name)):
            headers[name] = result_marker(saferepr(value))


def _withholding(handler: Callable[..., Any], body_first: bool) -> Callable[..., Any]:
    """One of the consumer's handlers of refused or unknown messages, after ``_withhold``: what
    Celery logs of the message is then its headers and a size, never its body."""

    def withheld(*args: Any) -> Any:
        if body_first:  # (body, message, ...): the body Celery passes may be decoded already
            _withhold(args[1])
            return handler(None, *args[1:])
        _withhold(args[0])  # (message, exc)
        return handler(*args)

    return withheld


def _guarded_handler(create: Callable[..., Any], consumer: Any, envelope_only: bool) -> Any:
    """The consumer's ``create_task_handler``, whose handler refuses a sealed message without
    ``task`` and ``id`` headers, and (``envelope_only``) an unsealed one without a ``task``
    header, before Celery decodes either to look for a protocol 1 body."""
    from celery.exceptions import InvalidTaskError

    def create_task_handler(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler = create(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            headers = message.headers if isinstance(message.headers, dict) else {}
            sealed = message.content_type == CONTENT_TYPE
            if (sealed and not {"task", "id"} <= headers.keys()) or (
                envelope_only and not sealed and "task" not in headers
            ):
                reason = (
                    "sealed, without task and id headers" if sealed else "unsealed, no task header"
                )
                refused = InvalidTaskError(f"refused a task message {_who(message)}: {reason}")
                return consumer.on_invalid_task(None, message, refused)
            return handler(message)

        return on_task_received

    return create_task_handler


class _PoolApplyFilter(logging.Filter):
    """``celery.pool`` at DEBUG logs ``TaskPool: Apply`` with the request Celery built, which
    holds the decoded arguments: those two fields become a marker."""

    def filter(self, record: logging.LogRecord) -> bool:
        applying = isinstance(record.msg, str) and record.msg.startswith("TaskPool: Apply")
        if applying and isinstance(record.args, tuple) and len(record.args) == 3:
            record.args = (record.args[0], APPLY_WITHHELD, APPLY_WITHHELD)
        return True


_POOL_FILTER = _PoolApplyFilter()


def _consumer_step() -> type:
    from celery import bootsteps  # type: ignore[import-untyped]

    class SealedMessages(bootsteps.StartStopStep):  # type: ignore[misc]
        """Wraps every task strategy of the consumer in ``checked_strategy``."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            envelope_only = only_envelope(c.app.conf)
            for name, strategy in list(c.strategies.items()):
                if not getattr(strategy, "envelope_checked", False):
                    c.strategies[name] = checked_strategy(strategy, envelope_only)
            if getattr(c, "envelope_guarded", False):
                return
            c.envelope_guarded = True
            for name in ("on_unknown_message", "on_invalid_task", "on_unknown_task"):
                setattr(c, name, _withholding(getattr(c, name), body_first=True))
            c.on_decode_error = _withholding(c.on_decode_error, body_first=False)
            if getattr(c, "task_consumer", None) is not None:
                c.task_consumer.on_decode_error = c.on_decode_error
            c.create_task_handler = _guarded_handler(c.create_task_handler, c, envelope_only)

    return SealedMessages


_installed: weakref.WeakSet[Any] = weakref.WeakSet()


def install_worker(app: Any) -> bool:
    """At ``worker_init``: the consumer checks every task message (``checked_strategy``) when
    ``app`` uses the serializer. True when it does."""
    if not uses_envelope(app.conf):
        return False
    _ensure_connected()
    if app not in _installed:
        app.steps["consumer"].add(_consumer_step())
        _installed.add(app)
    pool = logging.getLogger("celery.pool")
    if _POOL_FILTER not in pool.filters:
        pool.addFilter(_POOL_FILTER)
    return True
