"""Sections 4 and 5: rotation against a sequential re-seal loop, and KMS calls per 1,000 sets."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from harness import Goal, table
from payloads import celery_result
from server import add_latency, fresh_bucket, moto_process, s3_endpoint

import celery_s3_envelope as cse
from celery_s3_envelope.kms import KmsKey
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.store import S3Store


def _fill(store: S3Store, keyring: cse.Keyring, prefix: str, count: int) -> list[str]:
    keys = [f"{prefix}celery-task-meta-{i:06d}" for i in range(count)]
    value = celery_result(1024)

    def put(key: str) -> None:
        store.put(key, cse.seal(value, key=key, keyring=keyring))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))
    return keys


def rotation(quick: bool = False, server: str = "moto") -> dict[str, Any]:
    measured = [_rotation(500 if quick else 2000, latency=0.0, server=server)]
    measured.append(_rotation(200 if quick else 500, latency=LATENCY, server=server))
    rows = [row for m in measured for row in m["rows"]]
    print(f"## 4. Rotation against a sequential re-seal loop ({measured[0]['server']})\n")
    print(table(["objects", "network", "method", "time", "objects/s", "speed-up"], rows))
    print()
    return {
        "results": {m["label"]: m["results"] for m in measured},
        "goals": [  # loopback is bound by botocore's and the server's CPU: a row, no goal
            Goal(f"rotation_speedup_vs_sequential{m['suffix']}", m["speedup"], 10, at_most=False)
            for m in measured
            if m["suffix"]
        ],
        "server": measured[0]["server"],
    }


LATENCY = 0.02
"""Modelled round trip for the latency rows: 20 ms, typical of S3 for small objects."""


def _rotation(count: int, latency: float, server: str) -> dict[str, Any]:
    k1 = cse.Keyring.generate("k1")
    both = k1.with_entry(cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE), activate=True)
    with s3_endpoint(server) as endpoint, fresh_bucket(endpoint) as bucket:
        store = endpoint.store(bucket)
        loop_keys = _fill(store, k1, "loop/", count)
        _fill(store, k1, "rotate/", count)
        if latency:
            add_latency(store.client, latency)

        started = time.perf_counter()
        for key in loop_keys:  # what one would write without the rotate command
            data = store.get(key)
            assert data is not None
            store.put(key, cse.seal(cse.unseal(data, keyring=both, key=key), key=key, keyring=both))
        sequential = time.perf_counter() - started

        report = Rotation(store, both, prefix="rotate/", workers=16).run()
        assert report.ok and report.counts["rewrapped"] == count
        speedup = sequential / report.elapsed
        name = endpoint.name
    network = f"+{latency * 1000:.0f} ms per request" if latency else "loopback"
    rows = [
        [f"{count:,}", network, "sequential get / unseal / seal / put", f"{sequential:.2f} s",
         f"{count / sequential:,.0f}", ""],
        [f"{count:,}", network, "`rotate` (16 threads, rewrap)", f"{report.elapsed:.2f} s",
         f"{report.rate:,.0f}", f"{speedup:.2f}x"],
    ]  # fmt: skip
    return {
        "rows": rows,
        "server": name,
        "label": f"{count} objects, {network}",
        "suffix": "_with_latency" if latency else "",
        "speedup": speedup,
        "results": {
            "objects": count,
            "latency_seconds": latency,
            "sequential_seconds": sequential,
            "rotate_seconds": report.elapsed,
            "speedup": speedup,
        },
    }


def kms(quick: bool = False) -> dict[str, Any]:
    count = 1000
    results: dict[str, Any] = {}
    rows = []
    with moto_process() as endpoint, fresh_bucket(endpoint) as bucket:
        arn = endpoint.client("kms").create_key()["KeyMetadata"]["Arn"]
        for label, cache in (("cache on (default)", {}), ("cache off", {"uses": 0})):
            app = Celery("kms", set_as_current=False)
            app.conf.update(
                result_backend="s3envelope",
                envelope_keyring=cse.Keyring([KmsKey("kms-1", arn, cse.KeyState.ACTIVE)]),
                envelope_kms_endpoint_url=endpoint.url,
                envelope_kms_cache_uses=cache.get("uses"),
                s3_base_path="kms/",
                **endpoint.settings(bucket),
            )
            backend = app.backend
            calls: list[str] = []
            backend.keyring.active.provider.client.meta.events.register(
                "before-send.kms.*",
                lambda request, calls=calls, **_: calls.append(
                    request.headers["X-Amz-Target"].decode()
                ),
            )
            started = time.perf_counter()
            for i in range(count):
                backend.set(f"k-{i}", f'{{"status": "SUCCESS", "result": {i}}}')
            elapsed = time.perf_counter() - started
            generated = sum(1 for c in calls if c.endswith("GenerateDataKey"))
            rows.append([label, f"{generated:,}", f"{len(calls):,}", f"{count / elapsed:,.0f}"])
            results[label] = {"generate_data_key_calls": generated, "kms_calls": len(calls)}
    print(f"## 5. KMS: calls per {count:,} results stored\n")
    print(table(["KEK cache", "GenerateDataKey", "KMS calls", "sets/s"], rows))
    print()
    goals = [
        Goal("kms_calls_per_1000_sets_cached", results["cache on (default)"]["kms_calls"], 1),
    ]
    return {"results": results, "goals": goals}
