"""Section 6: `rotate` locally and `rotate --distributed` on 1, 2 and 4 worker processes.

The same bucket contents each time (envelopes over Celery's three key prefixes), the same S3
server, one run. The distributed figure is the driver's wall time: from sending the shards to the
merged report, worker start-up excluded. The worker logs at DEBUG (the test harness's worker).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import Goal, table
from payloads import celery_result
from server import Endpoint, fresh_bucket, s3_endpoint

import celery_s3_envelope as cse
from celery_s3_envelope.ops.celery_keys import CELERY_KEY_PREFIXES
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.runs import Driver
from celery_s3_envelope.store import S3Store

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
BASE = "e2e/results/"  # the test worker app's s3_base_path (tests/support/worker.py)
PROCESSES = (1, 2, 4)


def _fill(store: S3Store, keyring: cse.Keyring, count: int) -> None:
    value = celery_result(1024)

    def put(i: int) -> None:
        key = f"{BASE}{CELERY_KEY_PREFIXES[i % 3]}{uuid.uuid4()}"
        store.put(key, cse.seal(value, key=key, keyring=keyring))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def _distributed(endpoint: Endpoint, bucket: str, both: cse.Keyring, processes: int) -> float:
    from support.s3 import S3Endpoint
    from support.worker import running_worker

    tests_endpoint = S3Endpoint(
        endpoint.url, endpoint.access_key_id, endpoint.secret_access_key, endpoint.region, "moto"
    )
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        both.to_file(tmp / "keyring.json")
        include = {"include": ["celery_s3_envelope.distributed"]}
        with running_worker(
            tests_endpoint, bucket, tmp / "keyring.json", tmp, concurrency=processes, **include
        ) as worker:
            driver = Driver(worker.app, endpoint.store(bucket), BASE)
            started = time.perf_counter()
            result = driver.wait(driver.start("rotate", both, {"workers": 16}, parts=8), poll=0.1)
            elapsed = time.perf_counter() - started
    assert result.ok, result.to_dict()["shards"]
    return result.report.counts["rewrapped"] / elapsed


def run(quick: bool = False) -> dict[str, Any]:
    count = 500 if quick else 2000
    k1 = cse.Keyring.generate("k1")
    both = k1.with_entry(cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE), activate=True)
    rates: dict[str, float] = {}
    with s3_endpoint() as endpoint:
        with fresh_bucket(endpoint) as bucket:
            store = endpoint.store(bucket)
            _fill(store, k1, count)
            report = Rotation(store, both, prefix=BASE, workers=16).run()
            assert report.ok and report.counts["rewrapped"] == count
            rates["local"] = report.counts["rewrapped"] / report.elapsed
        for processes in PROCESSES:
            with fresh_bucket(endpoint) as bucket:
                _fill(endpoint.store(bucket), k1, count)
                rates[f"{processes}"] = _distributed(endpoint, bucket, both, processes)
        server = endpoint.name
    rows = [["local (one process, 16 threads)", f"{rates['local']:,.0f}", "1.00x"]]
    rows += [
        [f"--distributed, {n} worker process(es)", f"{rates[str(n)]:,.0f}",
         f"{rates[str(n)] / rates['local']:.2f}x"]
        for n in PROCESSES
    ]  # fmt: skip
    cpus = os.cpu_count()
    print(f"## 6. rotate: local against --distributed ({count:,} objects, {server}, {cpus} CPUs)\n")
    print(table(["driver", "objects/s", "vs local"], rows))
    print()
    goals = [Goal("distributed_2_processes_vs_1", rates["2"] / rates["1"], 1.0, at_most=False)]
    return {
        "results": {"objects": count, "cpus": cpus, "objects_per_second": rates},
        "goals": goals,
    }
