"""The Celery app that ``celery-s3-envelope demo`` runs in its worker: a few tasks, one failing.

Configured from ``$CELERY_S3_ENVELOPE_DEMO_SETTINGS`` (JSON of Celery settings, written by the
demo: broker folders, bucket, endpoint, keyring path; never key material), so that the worker
subprocess and the demo's own client read the same configuration.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from .demo import SETTINGS_ENV


def settings_from_env() -> dict[str, Any]:
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise RuntimeError(
            f"{SETTINGS_ENV} is not set: start the demo with `celery-s3-envelope demo`"
        )
    settings: dict[str, Any] = json.loads(text)
    return settings


app = Celery("celery_s3_envelope.cli.demo_app", set_as_current=False)
app.conf.update(settings_from_env())


@app.task(name="demo.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.patient_record")  # type: ignore[untyped-decorator]
def patient_record(name: str) -> dict[str, Any]:
    """The kind of result the bucket must never hold in clear."""
    return {
        "name": name,
        "date_of_birth": "1984-02-29",
        "diagnosis": "J45.909 asthma, uncomplicated",
        "notes": "responds well to salbutamol; follow-up in 6 weeks",
    }


@app.task(name="demo.lab_report")  # type: ignore[untyped-decorator]
def lab_report(rows: int) -> list[dict[str, Any]]:
    """A larger, repetitive result: what zstd compression is for."""
    return [
        {"sample": f"S-{i:05d}", "analyte": "glucose", "value": 90 + i % 17, "unit": "mg/dL"}
        for i in range(rows)
    ]


@app.task(name="demo.greet")  # type: ignore[untyped-decorator]
def greet(name: str) -> str:
    return f"héllo {name} ✓"


@app.task(name="demo.divide")  # type: ignore[untyped-decorator]
def divide(x: float, y: float) -> float:
    return x / y  # divide(1, 0): the failing task; its traceback is sealed too
