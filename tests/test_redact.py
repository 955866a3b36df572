"""``envelope_redact`` in one process: Celery's own tracer and event dispatcher, redacted.

Tasks run through ``celery.app.trace.trace_task``, the function a worker's pool runs, so the log
records are the ones a worker writes; events go through the app's dispatcher on kombu's in-memory
broker to a real receiver. ``test_redact_worker.py`` does the same with a real worker process.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.trace import trace_task
from celery.exceptions import ImproperlyConfigured
from celery.utils.imports import symbol_by_name

from celery_s3_envelope import redact
from celery_s3_envelope.redact_text import exception_summary, result_marker, traceback_summary
from support.events import collecting_events

MARKER = "ssn-078-05-1120"
INNER = "inner-4242"
TASK_ID = "7a1c6e0e-0000-4000-8000-000000000001"


class Expected(ValueError):
    """Declared in ``throws``: Celery logs it at INFO, without a traceback."""


def _tasks(app: Celery) -> None:
    @app.task(name="t.ok", shared=False)
    def ok() -> dict[str, str]:
        return {"ssn": MARKER}

    @app.task(name="t.boom", shared=False)
    def boom() -> None:
        try:
            raise KeyError(INNER)
        except KeyError as exc:
            raise ValueError(f"bad value {MARKER}\nsecond line {MARKER}") from exc

    @app.task(name="t.expected", throws=(Expected,), shared=False)
    def expected() -> None:
        raise Expected(MARKER)

    @app.task(name="t.retry", bind=True, max_retries=3, shared=False)
    def retry(self: Any) -> None:
        raise self.retry(exc=ValueError(MARKER), countdown=60)


@pytest.fixture
def make_test_app() -> Iterator[Callable[..., Celery]]:
    """``make_test_app(**conf)``: an app on the in-memory broker; nothing installed before."""
    made: list[Celery] = []

    def make(**conf: Any) -> Celery:
        app = Celery("redact-tests", set_as_current=False)
        app.conf.update(broker_url="memory://", result_backend="cache+memory://", **conf)
        _tasks(app)
        redact.uninstall(app)  # the filter is process-wide: start from none
        made.append(app)
        return app

    yield make
    for app in made:
        redact.uninstall(app)


@pytest.fixture
def app(make_test_app: Callable[..., Celery]) -> Celery:
    app = make_test_app()
    assert redact.install(app) is True
    return app


def run(app: Celery, name: str, task_id: str = TASK_ID) -> Any:
    """Run a task as a pool process does."""
    task = app.tasks[name]
    return trace_task(task, task_id, (), {}, {"id": task_id, "delivery_info": {}}, app=app)


def task_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name in redact.LOGGERS]


def assert_no_marker(caplog: pytest.LogCaptureFixture) -> None:
    """Neither the formatted text nor any attribute of any record (args, data, exc_*)."""
    assert MARKER not in caplog.text and INNER not in caplog.text
    for record in caplog.records:
        assert MARKER not in repr(vars(record)), record.name


# -- the log records of the tracer -------------------------------------------------------------
def test_success_line_shows_a_marker_not_the_value(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert run(app, "t.ok").retval == {"ssn": MARKER}  # the value itself is untouched
    (record,) = [r for r in task_records(caplog) if "succeeded" in r.getMessage()]
    assert record.getMessage().startswith(f"Task t.ok[{TASK_ID}] succeeded in ")
    assert record.getMessage().endswith(": <sealed: dict, 26 B>")
    assert record.data["return_value"] == "<sealed: dict, 26 B>"  # type: ignore[attr-defined]
    assert_no_marker(caplog)


def test_failure_line_keeps_type_task_and_frames(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outcome = run(app, "t.boom")
    assert MARKER in str(outcome.retval.exception)  # what the backend stores is untouched
    (record,) = [r for r in task_records(caplog) if r.levelno == logging.ERROR]
    assert (
        record.getMessage() == f"Task t.boom[{TASK_ID}] raised unexpected: ValueError(<redacted>)"
    )
    assert record.exc_info is None and record.exc_text is not None
    text = record.exc_text
    assert text.count("Traceback (most recent call last):") == 2  # the cause's and its own
    assert "KeyError: <redacted>" in text and "ValueError: <redacted>" in text
    assert f'File "{__file__}", line ' in text and ", in boom" in text
    assert "raise ValueError(" in text  # the frame's source line stays
    assert "The above exception was the direct cause of the following exception:" in text
    assert "\nsecond line" not in text
    assert record.data["traceback"].endswith("ValueError: <redacted>\n")  # type: ignore[attr-defined]
    assert_no_marker(caplog)


def test_expected_failure_and_retry_lines(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run(app, "t.expected")
    run(app, "t.retry", "7a1c6e0e-0000-4000-8000-000000000002")
    messages = [r.getMessage() for r in task_records(caplog)]
    assert f"Task t.expected[{TASK_ID}] raised expected: Expected(<redacted>)" in messages
    assert "Task t.retry[7a1c6e0e-0000-4000-8000-000000000002] retry: <redacted>" in messages
    assert_no_marker(caplog)


def test_request_handler_error_record(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    """``celery.worker.request`` logs ``Task handler raised error: %r`` with the exc_info."""
    caplog.set_level(logging.DEBUG)
    try:
        raise RuntimeError(MARKER)
    except RuntimeError as exc:
        logging.getLogger("celery.worker.request").error(
            "Task handler raised error: %r", exc, exc_info=sys.exc_info()
        )
    (record,) = task_records(caplog)
    assert record.getMessage() == "Task handler raised error: RuntimeError(<redacted>)"
    assert record.exc_text is not None and record.exc_text.endswith("RuntimeError: <redacted>")
    assert_no_marker(caplog)


def test_chord_failure_records_and_only_those(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """``Chord %r raised: %r`` carries a header task's exception; S3 retry warnings do not."""
    caplog.set_level(logging.DEBUG)
    base = logging.getLogger("celery.backends.base")
    try:
        raise ValueError(MARKER)
    except ValueError as exc:
        base.exception("Chord %r raised: %r", "g1", f"Dependency {TASK_ID} raised {exc!r}")
        base.warning("Failed operation %s. Retrying %s more times.", "get", 2, exc_info=True)
    chord_record, retry_record = [r for r in caplog.records if r.name == "celery.backends.base"]
    assert chord_record.getMessage() == (
        f"Chord 'g1' raised: 'Dependency {TASK_ID} raised ValueError(<redacted>)'"
    )
    assert chord_record.exc_text is not None
    assert chord_record.exc_text.endswith("ValueError: <redacted>")
    assert retry_record.exc_info is not None  # left as Celery logged it


def test_keep_exception_text(make_test_app: Callable[..., Celery], caplog: Any) -> None:
    app = make_test_app(envelope_redact_exceptions=False)
    assert redact.install(app) is True
    caplog.set_level(logging.DEBUG)
    run(app, "t.ok")
    run(app, "t.boom", "7a1c6e0e-0000-4000-8000-000000000003")
    assert "<sealed: dict, 26 B>" in caplog.text
    assert f"bad value {MARKER}" in caplog.text and f"KeyError: '{INNER}'" in caplog.text
    assert repr({"ssn": MARKER}) not in caplog.text


def test_redaction_off_leaves_celery_as_it_is(
    make_test_app: Callable[..., Celery], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_test_app(envelope_redact="false")
    assert redact.install(app) is False
    caplog.set_level(logging.DEBUG)
    run(app, "t.ok")
    run(app, "t.boom", "7a1c6e0e-0000-4000-8000-000000000004")
    assert repr({"ssn": MARKER}) in caplog.text and f"bad value {MARKER}" in caplog.text
    assert not any(
        isinstance(f, redact.RedactingFilter) for f in logging.getLogger("celery.app.trace").filters
    )


def test_a_record_the_filter_cannot_read_is_withheld(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError(MARKER)

    caplog.set_level(logging.DEBUG)
    logging.getLogger("celery.app.trace").info("%(return_value)s", {"return_value": Unprintable()})
    (record,) = task_records(caplog)
    assert record.getMessage() == "log record withheld by envelope_redact (RuntimeError)"


def test_install_is_idempotent_and_uninstall_undoes_it(app: Celery) -> None:
    original = symbol_by_name(app.events.dispatcher_cls).envelope_base
    redact.install(app)
    for name in redact.LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, redact.RedactingFilter) for f in filters) == 1
    dispatcher = app.events.Dispatcher
    assert issubclass(dispatcher, redact.RedactingDispatcher)
    wrappers = [c for c in dispatcher.__mro__ if "envelope_base" in vars(c)]
    assert wrappers[-1] is redact.RedactingDispatcher and len(wrappers) == 2  # wrapped once
    redact.uninstall(app)
    assert symbol_by_name(app.events.dispatcher_cls) is original
    assert not issubclass(app.events.Dispatcher, redact.RedactingDispatcher)
    assert not logging.getLogger("celery.app.trace").filters


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ({}, (True, True)),
        ({"envelope_redact": "off"}, (False, False)),
        ({"envelope_redact": False, "envelope_redact_exceptions": True}, (False, False)),
        ({"envelope_redact_exceptions": "no"}, (True, False)),
        ({"envelope_redact": "1", "envelope_redact_exceptions": "TRUE"}, (True, True)),
    ],
)
def test_settings(conf: dict[str, Any], expected: tuple[bool, bool]) -> None:
    settings = redact.settings_from_conf(conf)
    assert (settings.results, settings.exceptions) == expected


def test_a_bad_setting_names_itself() -> None:
    with pytest.raises(ImproperlyConfigured, match="envelope_redact_exceptions"):
        redact.settings_from_conf({"envelope_redact_exceptions": "maybe"})


# -- events ------------------------------------------------------------------------------------
def _formatted_failure() -> str:
    try:
        raise ValueError(MARKER)
    except ValueError as exc:
        return "".join(traceback.format_exception(exc))


def test_task_events_are_redacted_on_the_wire(app: Celery) -> None:
    failure = _formatted_failure()
    with collecting_events(app) as events, app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="w@h", enabled=True)
        dispatcher.send("task-received", uuid="1", args="(1,)", kwargs="{}", name="t.ok")
        dispatcher.send("task-succeeded", uuid="1", result=repr({"ssn": MARKER}), runtime=0.5)
        dispatcher.send(
            "task-failed", uuid="2", exception=f"ValueError({MARKER!r})", traceback=failure
        )
        dispatcher.send(
            "task-retried", uuid="3", exception=f"ValueError({MARKER!r})", traceback=failure
        )
        dispatcher.close()
        assert events.wait_for(lambda c: len(c.events) >= 4, timeout=10), events.events
    received, succeeded, failed, retried = events.events
    assert MARKER not in repr(events.events)
    assert received["args"] == "(1,)"  # arguments are not this setting's business
    assert succeeded["result"] == "<sealed: dict, 26 B>" and succeeded["runtime"] == 0.5
    for event in (failed, retried):
        assert event["exception"] == "ValueError(<redacted>)"
        assert event["traceback"].startswith("Traceback (most recent call last):\n  File ")
        assert event["traceback"].endswith("ValueError: <redacted>\n")


def test_events_keep_exceptions_when_asked(make_test_app: Callable[..., Celery]) -> None:
    app = make_test_app(envelope_redact_exceptions=False)
    redact.install(app)
    with collecting_events(app) as events, app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="w@h", enabled=True)
        dispatcher.send("task-succeeded", uuid="1", result=repr([MARKER]), runtime=0.5)
        dispatcher.send("task-failed", uuid="2", exception=f"ValueError({MARKER!r})")
        dispatcher.close()
        assert events.wait_for(lambda c: len(c.events) >= 2, timeout=10), events.events
    succeeded, failed = events.events
    assert succeeded["result"] == "<sealed: list, 19 B>"
    assert failed["exception"] == f"ValueError({MARKER!r})"


# -- the text transforms -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "marker"),
    [
        ({"ssn": "x"}, "<sealed: dict, 12 B>"),
        ({}, "<sealed: dict, 2 B>"),
        ({1, 2}, "<sealed: set, 6 B>"),
        ([1], "<sealed: list, 3 B>"),
        ((1,), "<sealed: tuple, 4 B>"),
        ("é", "<sealed: str, 4 B>"),
        (b"x", "<sealed: bytes, 4 B>"),
        (-12, "<sealed: int, 3 B>"),
        (1.5, "<sealed: float, 3 B>"),
        (None, "<sealed: NoneType, 4 B>"),
        (False, "<sealed: bool, 5 B>"),
        (frozenset(), "<sealed: frozenset, 11 B>"),
        (object(), "<sealed: object, "),
        ({"big": "x" * 5000}, "<sealed: dict, >1.0 KiB>"),
    ],
)
def test_result_marker(value: object, marker: str) -> None:
    from celery.utils.saferepr import saferepr

    assert result_marker(saferepr(value, 1024)).startswith(marker)


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        (f"ValueError({MARKER!r})", "ValueError(<redacted>)"),
        ("RuntimeError()", "RuntimeError()"),
        (f"KeyError: {MARKER}", "KeyError: <redacted>"),
        ("StopIteration", "StopIteration"),
        (f"Retry in 60s: ValueError({MARKER!r})", "<redacted>"),
        (f"{MARKER} happened", "<redacted>"),
        (f"E: a\n{MARKER}", "<redacted>"),
    ],
)
def test_exception_summary(text: str, summary: str) -> None:
    assert exception_summary(text) == summary


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _raised(factory: Callable[[], None]) -> BaseException:
    try:
        factory()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def _chained() -> None:
    try:
        {}[MARKER]
    except KeyError as exc:
        raise ValueError(f'one {MARKER}\n  File "{MARKER}", line 1, in x\n    {MARKER}') from exc


def _noted() -> None:
    exc = LookupError(MARKER)
    exc.add_note(f"note {MARKER}")
    raise exc


def _in_context() -> None:
    try:
        raise OSError(MARKER)
    except OSError:
        raise RuntimeError  # noqa: B904 (the implicit chain is the case under test)


def _syntax() -> None:
    compile(f"1 +* {MARKER!r}", "<task>", "eval")


def _group() -> None:
    raise ExceptionGroup(MARKER, [ValueError(MARKER), TypeError(MARKER)])


@pytest.mark.parametrize(
    ("factory", "kept"),
    [
        (_chained, ["ValueError: <redacted>", "in _chained", "{}[MARKER]"]),
        (_noted, ["LookupError: <redacted>", "in _noted"]),
        (_in_context, ["OSError: <redacted>", "another exception occurred", "\nRuntimeError"]),
        (_syntax, ["SyntaxError: <redacted>", "in _syntax"]),
        (_group, ["<redacted>"]),  # groups: fail closed, frames too
    ],
)
def test_traceback_summary(factory: Callable[[], None], kept: list[str]) -> None:
    text = _format(_raised(factory))
    assert MARKER in text
    summary = traceback_summary(text)
    assert MARKER not in summary
    for part in kept:
        assert part in summary
    assert traceback_summary(summary) == summary  # stable: a redacted traceback stays as it is


def test_traceback_summary_of_a_bare_exception_line() -> None:
    assert traceback_summary(f"ValueError: {MARKER}\n") == "ValueError: <redacted>\n"
    assert traceback_summary(f"{MARKER}") == "<redacted>"
    assert traceback_summary("") == "<redacted>"


# -- wiring ------------------------------------------------------------------------------------
def test_the_backend_installs_it_when_it_starts(make_app: Callable[..., Celery]) -> None:
    app = make_app()
    try:
        app.backend  # noqa: B018
        assert issubclass(app.events.Dispatcher, redact.RedactingDispatcher)
        assert any(
            isinstance(f, redact.RedactingFilter)
            for f in logging.getLogger("celery.app.trace").filters
        )
    finally:
        redact.uninstall(app)
    off = make_app(envelope_redact=False)
    off.backend  # noqa: B018
    assert not issubclass(off.events.Dispatcher, redact.RedactingDispatcher)
