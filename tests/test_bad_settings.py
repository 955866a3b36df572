"""Every bad setting is refused at backend start with ``ImproperlyConfigured`` naming it
(docs/backend.md): nothing slips through to fail later, or silently means something else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from celery.exceptions import ImproperlyConfigured

import celery_s3_envelope as cse
from support.apps import MakeApp, backend_of

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"s3_endpoint_url": "notaurl"}, "s3_endpoint_url must be an http(s):// URL"),
        ({"envelope_kms_endpoint_url": "kms.local"}, "envelope_kms_endpoint_url must be"),
    ],
)
def test_an_endpoint_that_is_not_a_url(make_app: MakeApp, conf: dict[str, str], named: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(named)):
        backend_of(make_app(**conf))


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("s3envelope://{bucket}/celery/?region=", "'region' of the s3envelope:// URL is empty"),
        ("s3envelope://onlyid@{bucket}/celery/", "access key id without its secret"),
        ("s3envelope://:secret@{bucket}/celery/", "access key id without its secret"),
        ("s3envelope://{bucket}/?region=a&region=b", "'region' is given twice"),
    ],
)
def test_a_url_that_says_less_or_more_than_it_seems(
    make_app: MakeApp, bucket: str, url: str, named: str
) -> None:
    app = make_app(s3_region="eu-west-1")
    with pytest.raises(ImproperlyConfigured, match=re.escape(named)):
        type(app.backend)(app=app, url=url.format(bucket=bucket))


def test_the_published_example_keys_are_refused_unless_allowed(make_app: MakeApp) -> None:
    example = json.loads((ROOT / "keys.example").read_text())
    with (
        pytest.warns(cse.InsecureKeyringWarning),
        pytest.raises(ImproperlyConfigured, match="published example keys"),
    ):
        backend_of(make_app(envelope_keyring=example))
    with pytest.warns(cse.InsecureKeyringWarning):
        demo = backend_of(make_app(envelope_keyring=example, envelope_allow_example_keys=True))
    assert demo.keyring.active.id == "example-2026-11"
