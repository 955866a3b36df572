"""Realistic Celery result payloads: what a worker's JSON serializer stores for a task."""

from __future__ import annotations

import json
import random
import uuid


def _record(rng: random.Random, i: int) -> dict[str, object]:
    first = rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances"])
    last = rng.choice(["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen"])
    return {
        "id": i,
        "patient": f"{first} {last}",
        "mrn": f"MRN-{rng.randrange(10**8):08d}",
        "ward": rng.choice(["cardiology", "oncology", "neurology", "pediatrics"]),
        "admitted": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        "score": round(rng.random() * 100, 3),
        "flags": rng.sample(["fall-risk", "allergy", "diabetic", "dnr", "isolation"], 2),
    }


def celery_result(size: int, seed: int = 7) -> str:
    """A Celery result document (status, result, date_done, task_id...) of about ``size`` bytes."""
    rng = random.Random(seed)
    task_id = str(uuid.UUID(int=rng.getrandbits(128)))
    records: list[dict[str, object]] = []
    document: dict[str, object] = {
        "status": "SUCCESS",
        "result": {"records": records, "source": "ehr-export", "count": 0},
        "traceback": None,
        "children": [],
        "date_done": "2026-11-25T12:00:00.000000+00:00",
        "task_id": task_id,
    }
    text = json.dumps(document)
    while len(text) < size:
        records.append(_record(rng, len(records)))
        document["result"]["count"] = len(records)  # type: ignore[index]
        if size <= 1 << 16 or len(records) % 64 == 0:
            text = json.dumps(document)
    return text


TINY = '{"status": "SUCCESS", "result": 42}'  # about 20 bytes of result plus Celery's fields
PAYLOADS = {"1 KiB": 1024, "64 KiB": 64 * 1024, "4 MiB": 4 * 1024 * 1024}
