"""Tenant keys (docs/tenants.md): a worker's start time and memory against the number of tenants
in the key store (10, 1,000, 100,000).

The key store is a directory (``envelope_tenant_keystore``), one per size, populated directly:
each record is what ``TenantKeyStore`` writes (an independent random KEK wrapped under the root),
without the create-only dance. For each size a fresh interpreter does what a worker process does:
import Celery and the backend and build the app's ``EnvelopeS3Backend`` (the start), then seal a
result for ``FIRST_USES`` distinct tenants picked at random (each a first use: one folder listed,
one record read and unwrapped), for the same tenants again (from the cache), and for ``SPREAD``
random tenants, three times what the cache holds. It reports the times, its resident memory
(RSS, from Linux's ``/proc``) after the start and after the seals, and its peak. The runs of the
sizes are interleaved, ``ROUNDS`` rounds, medians shown. Nothing here talks to S3: the
start reads nothing from the store whatever its kind (tests/test_tenants.py checks that for the
bucket), and a PUT costs the same for any tenant.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from harness import Goal, table

import celery_s3_envelope as cse
from celery_s3_envelope.tenants import _wrap_record, tenant_kek_id

SIZES = (10, 1_000, 100_000)
FIRST_USES = 100
CACHE_SIZE = 1_000
SPREAD = 3_000
"""Tenants sealed for after the first uses: three times the cache, so the bound is exercised."""
ROUNDS = 5
"""Child runs per size, interleaved; the table shows medians."""

CHILD = r"""
import json, os, random, resource, sys, time
started = time.perf_counter()
def rss_kib():
    # Resident memory now (Linux: /proc), not the peak, which the imports set.
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from celery import Celery
import celery_s3_envelope as cse
from celery_s3_envelope.backend import EnvelopeS3Backend
config = json.loads(sys.argv[1])
app = Celery("bench", set_as_current=False)
app.conf.update(config["conf"])
backend = EnvelopeS3Backend(app=app)
start = time.perf_counter() - started
rss_start = rss_kib()
class Request:
    def __init__(self, tenant):
        self.task, self.headers, self.kwargs, self.id = "bench", {}, {"tenant": tenant}, "x"
def seal_for(tenants):
    started = time.perf_counter()
    for tenant in tenants:
        backend._seal("celery-task-meta-x", '{"status": "SUCCESS"}', Request(tenant))
    return (time.perf_counter() - started) / len(tenants)
backend._seal("celery-task-meta-x", '{"status": "SUCCESS"}', Request(None))  # warm-up
first = seal_for(config["first"])  # distinct tenants: each a first use
cached = seal_for(config["first"])  # the same again: each from the cache
seal_for(config["spread"])
rss_end = rss_kib()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"start": start, "first_use": first, "cached_use": cached,
                  "rss_start_kib": rss_start, "rss_end_kib": rss_end, "peak_rss_kib": peak,
                  "cached": backend.tenant_keys.cached()}))
"""


def tenant_of(request: Any) -> str | None:
    """The benchmark's selector: the ``tenant`` keyword argument."""
    tenant = request.kwargs.get("tenant")
    return None if tenant is None else str(tenant)


def populate(root: Path, keyring: cse.Keyring, size: int) -> None:
    """Records of ``tenant-000000`` .. ``tenant-<size - 1>``, written directly."""
    created = datetime.now(UTC)
    active = keyring.active
    for i in range(size):
        tenant = f"tenant-{i:06d}"
        folder = root / tenant
        folder.mkdir(parents=True)
        record = _wrap_record(tenant_kek_id(tenant, 1), os.urandom(32), active, created)
        (folder / "1.json").write_bytes(record)


def measure(store_dir: Path, keyring_file: Path, size: int) -> dict[str, Any]:
    rng = random.Random(size)
    first = [f"tenant-{i:06d}" for i in rng.sample(range(size), min(FIRST_USES, size))]
    spread = [f"tenant-{i:06d}" for i in rng.choices(range(size), k=SPREAD)]
    config = {
        "conf": {
            "result_backend": "s3envelope",
            "s3_bucket": "bench",
            "s3_access_key_id": "bench",
            "s3_secret_access_key": "bench",
            "s3_region": "us-east-1",
            "envelope_keyring": str(keyring_file),
            "envelope_tenant_keystore": str(store_dir),
            "envelope_tenant_cache_size": CACHE_SIZE,
            "envelope_tenant_selector": "tenants:tenant_of",
        },
        "first": first,
        "spread": spread,
    }
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config)],
        capture_output=True, text=True, check=True, env=env, timeout=600,
    )  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(quick: bool = False) -> dict[str, Any]:
    sizes = SIZES[:2] if quick else SIZES
    rounds = 1 if quick else ROUNDS
    keyring = cse.Keyring.generate("root-1")
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    filled: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tenants-") as scratch:
        keyring_file = Path(scratch) / "keys.json"
        keyring.to_file(keyring_file)
        for size in sizes:  # one store per size, so that the runs can be interleaved
            started = time.perf_counter()
            populate(Path(scratch) / f"store-{size}", keyring, size)
            filled[size] = time.perf_counter() - started
        os.sync()  # 100,000 new files: their writeback must not land on the measured runs
        order = list(sizes)
        rng = random.Random(1)
        for _ in range(rounds):  # interleaved, as the harness does: load hits every size alike
            rng.shuffle(order)
            for size in order:
                runs[size].append(measure(Path(scratch) / f"store-{size}", keyring_file, size))
    results: dict[str, Any] = {}
    rows = []
    for size in sizes:
        found = {name: median(run[name] for run in runs[size]) for name in runs[size][0]}
        found["populate_seconds"] = round(filled[size], 2)
        found["rounds"] = len(runs[size])
        results[str(size)] = found
        rows.append([
            f"{size:,}",
            f"{filled[size]:.1f} s",
            f"{found['start'] * 1000:.0f} ms",
            f"{found['rss_start_kib'] / 1024:.1f} MiB",
            f"{found['first_use'] * 1e6:.0f} µs",
            f"{found['cached_use'] * 1e6:.0f} µs",
            f"{found['rss_end_kib'] / 1024:.1f} MiB",
            f"{found['peak_rss_kib'] / 1024:.1f} MiB",
            f"{found['cached']:,.0f}",
        ])  # fmt: skip
    base, top = results[str(sizes[0])], results[str(sizes[-1])]
    start_ratio = top["start"] / base["start"]
    rss_ratio = top["rss_end_kib"] / base["rss_end_kib"]
    seals = 2 * FIRST_USES + SPREAD
    print("## 8. Tenant keys: worker start and memory against the key store's size\n")
    print(
        table(
            [
                "tenants in store", "populate", "start (imports + backend)", "RSS after start",
                "seal, tenant's first use", "seal, cached tenant",
                f"RSS after {seals:,} seals", "peak RSS", "KEKs cached",
            ],
            rows,
        )
    )  # fmt: skip
    print(
        f"\nMedians of {rounds} interleaved runs per size, each a fresh interpreter. "
        f"{sizes[-1]:,} vs {sizes[0]:,} tenants: start x{start_ratio:.2f}, RSS after "
        f"the seals x{rss_ratio:.2f} (cache bound {CACHE_SIZE:,} KEKs)\n"
    )
    goals = [
        Goal(f"tenants: start time at {sizes[-1]:,} vs {sizes[0]:,} tenants", start_ratio, 1.5),
        Goal(f"tenants: RSS at {sizes[-1]:,} vs {sizes[0]:,} tenants", rss_ratio, 1.2),
    ]
    return {"results": results, "goals": goals}
