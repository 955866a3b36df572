"""``envelope_redact``: keep results and exception messages out of the worker's logs and events.

The envelope seals what the backend stores, but Celery prints the same values elsewhere: the
tracer logs each return value and each exception (``celery.app.trace``), and with task events on,
``task-succeeded`` carries the result's repr and ``task-failed`` the exception. Two hooks cover
that without patching Celery, and ``install(app)``, called when the backend starts and when a worker
starts (``celery_command.install_at_worker_start``, so ``--quiet`` workers too), applies both:

* a logging filter on the loggers that print them (``LOGGERS``). A logger's filter runs before any
  handler formats the record, whatever the handlers are; pool children inherit it when forked, or
  install it when they start the backend.
* the app's event dispatcher class (``app.events.dispatcher_cls``, which Celery looks up for every
  dispatcher the app builds, the worker's included): a subclass whose ``send`` rewrites those
  fields before the event is buffered or published.

Results become ``<sealed: dict, 312 B>``; exceptions keep their type and traceback frames.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery.utils.imports import symbol_by_name  # type: ignore[import-untyped]
from celery.utils.saferepr import saferepr  # type: ignore[import-untyped]

from .redact_text import (
    REDACTED,
    exception_summary,
    is_result_marker,
    result_marker,
    traceback_summary,
)
from .settings import setting_bool

__all__ = [
    "EXCEPTIONS_SETTING",
    "LOGGERS",
    "SETTING",
    "RedactSettings",
    "RedactingDispatcher",
    "RedactingFilter",
    "install",
    "redact_event",
    "settings_from_conf",
    "uninstall",
]

SETTING = "envelope_redact"
"""Redact results (and, by default, exception messages). Default on; ``False`` turns it off."""
EXCEPTIONS_SETTING = "envelope_redact_exceptions"
"""``False`` keeps exception messages and full tracebacks (results stay redacted)."""
LOGGERS = ("celery.app.trace", "celery.worker.request", "celery.backends.base")
"""Celery's loggers that print return values and exceptions; of the last, only chord failures."""
CHORD_LOGGER = "celery.backends.base"
EXCEPTION_EVENTS = frozenset({"task-failed", "task-retried"})

_lock = threading.Lock()


@dataclass(frozen=True)
class RedactSettings:
    results: bool
    exceptions: bool


def settings_from_conf(conf: Mapping[str, Any]) -> RedactSettings:
    """Both settings default to on; exceptions are redacted only when results are."""
    results = setting_bool(conf, SETTING, default=True)
    exceptions = results and setting_bool(conf, EXCEPTIONS_SETTING, default=True)
    return RedactSettings(results=results, exceptions=exceptions)


class _Shown:
    """Prints as the given text under both ``%s`` and ``%r`` (an exception argument's stand-in)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def _formatted(exc_info: tuple[Any, Any, Any]) -> str:
    try:
        return "".join(traceback.format_exception(*exc_info))
    except Exception:
        return f"{getattr(exc_info[0], '__name__', 'Exception')}: {REDACTED}"


def _argument(arg: object, exc: BaseException | None) -> object:
    """An exception argument as its type; in a text argument, the record's exception's repr
    (``'Dependency %s raised %r'``, a chord's failure) as its type and its text as redacted."""
    if isinstance(arg, BaseException):
        return _Shown(exception_summary(saferepr(arg)))
    if isinstance(arg, str) and exc is not None:
        shown = repr(exc)
        arg = arg.replace(shown, exception_summary(shown))
        message = str(exc)
        return arg.replace(message, REDACTED) if len(message) >= 4 else arg
    return arg


class RedactingFilter(logging.Filter):
    """Rewrites Celery's task records in place; never drops one.

    Mapping arguments (Celery's log context, also in ``record.data``): ``return_value`` becomes the
    marker, ``exc`` and ``traceback`` lose the message. Exception arguments print as their type,
    text arguments lose the record's exception text; ``exc_info`` is formatted and redacted into
    ``exc_text``, so handlers print that instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.exceptions = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._rewrite(record)
        except Exception as exc:  # fail closed: a record this filter cannot read is withheld
            record.msg = "log record withheld by envelope_redact (%s)"
            record.args = (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
        return True

    def _rewrite(self, record: logging.LogRecord) -> None:
        if record.name == CHORD_LOGGER and not str(record.msg).startswith("Chord "):
            return  # the backend's own errors (S3, retries): no task value in them
        if isinstance(record.args, Mapping):
            record.args = self._context(record.args)
        elif isinstance(record.args, tuple) and self.exceptions:
            exc = record.exc_info[1] if record.exc_info else None
            record.args = tuple(_argument(arg, exc) for arg in record.args)
        data = getattr(record, "data", None)
        if isinstance(data, Mapping):
            record.data = self._context(data)
        if self.exceptions and record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or _formatted(record.exc_info)
            record.exc_info = None  # handlers print exc_text instead (logging's own contract)
            record.exc_text = traceback_summary(text).rstrip("\n")
        elif self.exceptions and record.exc_text:
            record.exc_text = traceback_summary(record.exc_text).rstrip("\n")

    def _context(self, context: Mapping[str, Any]) -> Mapping[str, Any]:
        changes: dict[str, str] = {}
        if "return_value" in context:
            changes["return_value"] = result_marker(str(context["return_value"]))
        if self.exceptions and "exc" in context:
            changes["exc"] = exception_summary(str(context["exc"]))
        if self.exceptions and context.get("traceback"):
            changes["traceback"] = traceback_summary(str(context["traceback"]))
        return {**context, **changes} if changes else context


_FILTER = RedactingFilter()


def redact_event(type: str, fields: dict[str, Any], exceptions: bool = True) -> dict[str, Any]:
    """``fields`` of a ``type`` event with the result (and exception text) replaced."""
    if type == "task-succeeded" and fields.get("result") is not None:
        result = fields["result"]
        return {
            **fields,
            "result": result_marker(result if isinstance(result, str) else saferepr(result)),
        }
    if exceptions and type in EXCEPTION_EVENTS:
        changes: dict[str, str] = {}
        if fields.get("exception"):
            changes["exception"] = exception_summary(str(fields["exception"]))
        if fields.get("traceback"):
            changes["traceback"] = traceback_summary(str(fields["traceback"]))
        return {**fields, **changes}
    return fields


def redact_arguments(fields: dict[str, Any]) -> dict[str, Any]:
    """A ``task-sent`` event's ``args`` and ``kwargs`` (Celery's reprs of the arguments, built
    before the serializer sees the message) replaced by markers, as ``argsrepr`` is."""
    changes = {
        name: result_marker(value)
        for name in ("args", "kwargs")
        if isinstance(value := fields.get(name), str) and not is_result_marker(value)
    }
    return {**fields, **changes} if changes else fields


class RedactingDispatcher:
    """Mixed into the app's event dispatcher class: ``send`` redacts, then sends as usual; so
    does ``publish`` (``task-sent``, sent by whoever publishes a task) for an app whose task
    messages are sealed (``task_serializer = "envelope"``)."""

    envelope_redact_exceptions = True
    envelope_base: type = object

    def send(self, type: str, *args: Any, **fields: Any) -> Any:
        fields = redact_event(type, fields, self.envelope_redact_exceptions)
        return super().send(type, *args, **fields)  # type: ignore[misc]

    def publish(self, type: str, fields: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if type == "task-sent" and _seals_messages(getattr(self, "app", None)):
            fields = redact_arguments(fields)
        return super().publish(type, fields, *args, **kwargs)  # type: ignore[misc]


def _seals_messages(app: Any) -> bool:
    conf = getattr(app, "conf", None)
    return conf is not None and conf.get("task_serializer") == "envelope"


def _install_events(app: Any, exceptions: bool) -> None:
    events = app.events
    current = symbol_by_name(events.dispatcher_cls)
    if issubclass(current, RedactingDispatcher):
        if current.envelope_redact_exceptions == exceptions:
            return
        current = current.envelope_base
    events.dispatcher_cls = type(
        f"Redacting{current.__name__}",
        (RedactingDispatcher, current),
        {"envelope_redact_exceptions": exceptions, "envelope_base": current},
    )
    del events.Dispatcher  # the cached class, if built: the next dispatcher is built from ours


def install(app: Any) -> bool:
    """Apply ``envelope_redact`` for ``app`` in this process; idempotent. True when it is on."""
    settings = settings_from_conf(app.conf)
    if not settings.results:
        return False
    with _lock:
        _FILTER.exceptions = _FILTER.exceptions or settings.exceptions
        for name in LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _install_events(app, settings.exceptions)
    return True


def uninstall(app: Any) -> None:
    """Undo ``install``: the filter leaves the loggers, ``app``'s dispatchers send as before."""
    with _lock:
        for name in LOGGERS:
            logging.getLogger(name).removeFilter(_FILTER)
        _FILTER.exceptions = False
        current = symbol_by_name(app.events.dispatcher_cls)
        if issubclass(current, RedactingDispatcher):
            app.events.dispatcher_cls = current.envelope_base
            del app.events.Dispatcher
