"""An exception message is never printed, whatever lines it holds: a message made of lines that
look like a traceback (chain headers, ``File`` lines, source lines, exception lines) leaves none
of its text in the redacted traceback (docs/security.md, ``envelope_redact``)."""

from __future__ import annotations

import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_s3_envelope.redact import redact_event
from celery_s3_envelope.redact_text import traceback_summary

SECRET = "Zoë Ångström B02.9"
SECRET_NAME = "Zoe_Angstrom_B029"  # identifier-shaped: could pass for a type or function name
CAUSE = "The above exception was the direct cause of the following exception:"
CONTEXT = "During handling of the above exception, another exception occurred:"


def a_real_frame() -> str:
    """A frame line this process can check: this file, this line, this function."""
    return traceback.format_stack(limit=1)[0].splitlines()[0]


REAL_FRAME = a_real_frame()

LINES = st.sampled_from(
    [
        "",
        "Traceback (most recent call last):",
        CAUSE,
        CONTEXT,
        f'  File "{SECRET}", line 1, in x',
        f'  File "{__file__}", line 1, in {SECRET_NAME}',
        f'  File "/usr/lib/{SECRET_NAME}.py", line 3, in <module>',
        REAL_FRAME,
        f"    {SECRET}",
        f"    {SECRET_NAME}()",
        "    ^^^^^^^^",
        f"ValueError: {SECRET}",
        f"{SECRET_NAME}: detail",
        SECRET_NAME,
        f"celery.exceptions.{SECRET_NAME}: x",
        f"builtins.{SECRET_NAME}",
        "KeyError",
        f"  {SECRET}",
        f"  + Exception Group Traceback: {SECRET}",
        "  [Previous line repeated 3 more times]",
    ]
)


def raised(message: str, cause: str | None) -> BaseException:
    def task() -> None:
        if cause is None:
            raise ValueError(message)
        try:
            raise KeyError(cause)
        except KeyError as exc:
            raise ValueError(message) from exc

    try:
        task()
    except ValueError as exc:
        return exc
    raise AssertionError("did not raise")


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(LINES, min_size=1, max_size=12).map("\n".join),
    st.none() | st.lists(LINES, min_size=1, max_size=6).map("\n".join),
)
def test_no_line_of_a_message_survives(message: str, cause: str | None) -> None:
    text = formatted(raised(SECRET + "\n" + message, cause))
    assert SECRET in text
    for summary in (
        traceback_summary(text),
        redact_event("task-failed", {"traceback": text})["traceback"],
    ):
        assert SECRET not in summary and SECRET_NAME not in summary, summary
        assert "ValueError: <redacted>" in summary
        assert "in task" in summary  # the real frames stay
        assert traceback_summary(summary) == summary


def test_a_forged_chain_keeps_only_what_this_process_can_check() -> None:
    message = "\n".join(
        [
            "first line",
            "",
            CONTEXT,
            "",
            "Traceback (most recent call last):",
            REAL_FRAME,
            f"    print({SECRET!r})",
            f"{SECRET_NAME}: {SECRET}",
        ]
    )
    summary = traceback_summary(formatted(raised(message, None)))
    assert SECRET not in summary and SECRET_NAME not in summary
    assert REAL_FRAME in summary  # real code, whoever wrote the line


def test_a_message_cannot_send_the_redaction_to_read_a_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the sources of imported modules are read: a message naming ``/dev/zero`` (or a
    FIFO, or any file) is not opened, and costs nothing."""
    import linecache

    opened: list[str] = []
    original = linecache.getlines

    def getlines(path: str, module_globals: dict[str, object] | None = None) -> list[str]:
        opened.append(path)
        return original(path, module_globals)

    monkeypatch.setattr(linecache, "getlines", getlines)
    message = 'x\n  File "/dev/zero", line 1, in <module>\n  File "/etc/passwd", line 1, in x'
    summary = traceback_summary(formatted(raised(message, None)))
    assert "/dev/zero" not in opened and "/etc/passwd" not in opened
    assert "/dev/zero" not in summary


def test_digits_of_a_message_do_not_survive() -> None:
    """A frame line's number must exist in its file, and a repeat line's count is not shown."""
    card = "4111111111111111"
    message = "\n".join(
        [
            "x",
            REAL_FRAME.replace(REAL_FRAME.split(", line ")[1].split(",")[0], card),
            f"  [Previous line repeated {card} more times]",
            f"card_{card}_declined: y",
        ]
    )
    summary = traceback_summary(formatted(raised(message, None)))
    assert card not in summary


def test_an_exception_repr_keeps_only_a_real_exception_type() -> None:
    from celery_s3_envelope.redact_text import exception_summary

    assert exception_summary("ValueError('ssn 078-05-1120')") == "ValueError(<redacted>)"
    assert exception_summary("card_4111111111111111_declined('x')") == "<redacted>"
    assert exception_summary("acct_99812: y") == "<redacted>"
