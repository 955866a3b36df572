"""``envelope_keyring`` (and ``$CELERY_S3_ENVELOPE_KEYRING``) may hold key material, by design
(the keyring's JSON) or by mistake (JSON where a path was meant, a key pasted into a path): no
error message, repr, warning or log line ever quotes it (docs/security.md)."""

from __future__ import annotations

import base64
import json
import logging
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celery_s3_envelope as cse
from celery_s3_envelope.settings import load_keyring

MATERIAL = st.binary(min_size=16, max_size=40).map(lambda b: base64.b64encode(b).decode())


def entry(material: str, **extra: Any) -> dict[str, Any]:
    return {"id": "k1", "state": "active", "created": "2026-11-25T00:00:00Z", "key": material}


@st.composite
def keyring_values(draw: st.DrawFn) -> tuple[object, str]:
    """A setting value that holds ``material`` somewhere, and the material."""
    material = draw(MATERIAL)
    document = {"version": 1, "keys": [entry(material)]}
    text = json.dumps(document)
    shapes: list[object] = [
        text,  # valid JSON (loads when the material is 32 bytes; refused otherwise)
        text[: draw(st.integers(1, len(text) - 1))],  # truncated JSON
        " " + text.replace('"active"', '"activ"'),  # an invalid state
        "/etc/celery/" + material,  # a key pasted into a path
        material,  # the key alone, as if it were a path
        text.replace("{", "[", 1),  # JSON-ish that is not an object: read as a path
        {"version": 1, "keys": [entry(material + "=")]},  # bad base64 in a dict
        {"version": 1, "keys": [entry(material), entry(material)]},  # duplicate ids
        {"version": 2, "keys": [entry(material)]},
        {"version": 1, "keys": [{**entry(material), "created": material}]},
        {"version": 1, "keys": [{**entry(material), "id": 7}]},
    ]
    return draw(st.sampled_from(shapes)), material


def forms(material: str) -> list[str]:
    raw = base64.b64decode(material)
    return [material, material.rstrip("="), raw.hex(), repr(raw)[2:-1]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keyring_values())
def test_no_message_quotes_a_keyring_value(case: tuple[object, str]) -> None:
    value, material = case
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                keyring = load_keyring(value)
            except ImproperlyConfigured as exc:
                shown = [str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)]
            else:
                shown = [repr(keyring), str(keyring), repr(keyring.active)]
    finally:
        logging.getLogger().removeHandler(handler)
    shown += [str(w.message) for w in caught]
    shown += [r.getMessage() for r in records]
    leaked = [form for form in forms(material) for text in shown if form in text]
    assert not leaked, (value, shown)


def test_json_where_a_path_was_meant_is_read_as_json(tmp_path: Any) -> None:
    """The rule: text starting with ``{`` is the keyring's JSON, anything else a path."""
    material = base64.b64encode(bytes(range(32))).decode()
    text = json.dumps({"version": 1, "keys": [entry(material)]})
    assert load_keyring("  " + text).active.id == "k1"
    (tmp_path / "k.json").write_text(text)
    (tmp_path / "k.json").chmod(0o600)
    assert load_keyring(str(tmp_path / "k.json")).active.id == "k1"


def test_the_backend_start_and_its_uri_never_show_the_keyring(
    make_app: Callable[..., Celery],
) -> None:
    material = base64.b64encode(b"\x01" * 31).decode()  # one byte short: refused
    text = json.dumps({"version": 1, "keys": [entry(material)]})
    with pytest.raises(ImproperlyConfigured) as refused:
        make_app(envelope_keyring=text).backend  # noqa: B018
    assert "envelope_keyring" in str(refused.value)
    assert material not in str(refused.value) and material not in repr(refused.value)

    good = base64.b64encode(b"\x02" * 32).decode()
    document = json.dumps({"version": 1, "keys": [entry(good)]})
    app = make_app()
    from urllib.parse import quote

    url = f"s3envelope://{app.conf.s3_bucket}/celery/?keyring={quote(document)}"
    with pytest.raises(ImproperlyConfigured, match="takes a path") as in_url:
        type(app.backend)(app=app, url=url)  # a URL is printed: celery inspect conf, report
    assert good not in str(in_url.value) and quote(good) not in str(in_url.value)


def test_the_variable_takes_a_path_or_json_by_the_same_rule(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$CELERY_S3_ENVELOPE_KEYRING`` as ``envelope_keyring``: JSON when it starts with ``{``,
    else a path; for the backend's setting left unset and for the command line alike."""
    from celery_s3_envelope.cli import envelope
    from support.cli import invoke

    keyring = cse.Keyring.generate("k1")
    path = tmp_path / "keys.json"
    keyring.to_file(path)
    sealed = tmp_path / "r.bin"
    sealed.write_bytes(cse.seal("value", key="k", keyring=keyring))
    for value in (str(path), json.dumps(keyring.to_dict())):
        monkeypatch.setenv("CELERY_S3_ENVELOPE_KEYRING", value)
        assert load_keyring(None).active.id == "k1"
        decoded = invoke(envelope, "decode", sealed)
        assert decoded.exit_code == 0 and decoded.stdout == "value\n", decoded.output
