"""Sections 2 and 3: the backend against Celery's stock S3Backend and raw boto3 on one server,
and the bytes each stores.

All three talk to the same server in the same run, interleaved round by round. HTTP requests
per operation are counted with botocore's ``before-send`` event on each contender's client.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.result import AsyncResult, ResultSet
from harness import Goal, fmt_time, interleave, ratio, table
from payloads import PAYLOADS, TINY, celery_result
from server import Endpoint, add_latency, fresh_bucket, s3_endpoint

import celery_s3_envelope as cse

LATENCY = 0.02


def apps(endpoint: Endpoint, bucket: str) -> tuple[Any, Any]:
    ours = Celery("ours", set_as_current=False)
    ours.conf.update(
        result_backend="s3envelope",
        envelope_keyring=cse.Keyring.generate("k1"),
        s3_base_path="ours/",
        **endpoint.settings(bucket),
    )
    stock = Celery("stock", set_as_current=False)
    stock.conf.update(result_backend="s3", s3_base_path="stock/", **endpoint.settings(bucket))
    return ours.backend, stock.backend


@contextmanager
def counting(client: Any) -> Any:
    sent: list[str] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(request.method)

    client.meta.events.register("before-send.s3", record)
    try:
        yield sent
    finally:
        client.meta.events.unregister("before-send.s3", record)


def requests_per_call(client: Any, call: Callable[[], Any], times: int = 5) -> float:
    with counting(client) as sent:
        for _ in range(times):
            call()
    return len(sent) / times


def client_cpu(
    contenders: dict[str, Callable[[], Any]], *, rounds: int, calls: int
) -> dict[str, list[float]]:
    """Process CPU time (``time.process_time``: every thread of this process, the server not
    included) per call of each contender, round by round in a shuffled order."""
    import random
    import time

    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    rng = random.Random(2)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            started = time.process_time()
            for _ in range(calls):
                contenders[name]()
            cpu[name].append((time.process_time() - started) / calls)
    return cpu


def run(quick: bool = False, server: str = "moto") -> dict[str, Any]:
    rounds = 7 if quick else 21
    with s3_endpoint(server) as endpoint, fresh_bucket(endpoint) as bucket:
        ours, stock = apps(endpoint, bucket)
        raw = endpoint.client()
        stock_client = stock._s3_resource.meta.client
        value = celery_result(1024)
        results: dict[str, Any] = {"server": endpoint.name}
        rows: list[list[str]] = []
        goals: list[Goal] = []

        # set / get / delete of a 1 KiB result
        ours.set("bench-key", value)
        stock.set("bench-key", value)
        raw.put_object(Bucket=bucket, Key="raw/bench-key", Body=value.encode())
        ops: dict[str, dict[str, Callable[[], Any]]] = {
            "set": {
                "ours": lambda: ours.set("bench-key", value),
                "stock": lambda: stock.set("bench-key", value),
                "raw": lambda: raw.put_object(
                    Bucket=bucket, Key="raw/bench-key", Body=value.encode()
                ),
            },
            "get": {
                "ours": lambda: ours.get("bench-key"),
                "stock": lambda: stock.get("bench-key"),
                "raw": lambda: raw.get_object(Bucket=bucket, Key="raw/bench-key")["Body"].read(),
            },
            # S3's DeleteObject is idempotent: the same request whether the key is there or not,
            # so deleting one key again and again times the call alone (set + delete below).
            "delete": {
                "ours": lambda: ours.delete("bench-gone"),
                "stock": lambda: stock.delete("bench-gone"),
                "raw": lambda: raw.delete_object(Bucket=bucket, Key="raw/bench-gone"),
            },
        }
        clients = {"ours": ours.store.client, "stock": stock_client, "raw": raw}
        for op, contenders in ops.items():
            timings = interleave(contenders, rounds=rounds, round_time=0.05)
            vs_raw, vs_stock = ratio(timings, "ours", "raw"), ratio(timings, "ours", "stock")
            counts = {n: requests_per_call(clients[n], f) for n, f in contenders.items()}
            rows.append(
                [
                    op if op == "delete" else f"{op} 1 KiB",
                    fmt_time(timings["ours"].median),
                    fmt_time(timings["stock"].median),
                    fmt_time(timings["raw"].median),
                    f"{vs_raw.median:.2f}x",
                    f"{vs_stock.median:.2f}x",
                    f"{counts['ours']:.0f} / {counts['stock']:.0f} / {counts['raw']:.0f}",
                ]
            )
            results[op] = {
                "seconds": {n: t.median for n, t in timings.items()},
                "ours_vs_raw": vs_raw.median,
                "ours_vs_stock": vs_stock.median,
                "requests": counts,
            }
            if op in ("get", "set"):
                goals.append(Goal(f"{op}_vs_raw_boto3", vs_raw.median, 1.1))
            if op == "get":
                goals.append(Goal("get_vs_stock", vs_stock.median, 0.55))

        # store_result + get_task_meta, and delete
        def roundtrip(backend: Any) -> Callable[[], Any]:
            def call() -> Any:
                task_id = str(uuid.uuid4())
                backend.store_result(task_id, {"rows": value}, "SUCCESS")
                backend._cache.clear()
                return backend.get_task_meta(task_id)

            return call

        def deleter(backend: Any) -> Callable[[], Any]:
            def call() -> None:
                backend.set("to-delete", "x")
                backend.delete("to-delete")

            return call

        cpu_rows: list[list[str]] = []
        for label, make in (("store_result + get_task_meta", roundtrip), ("set + delete", deleter)):
            contenders = {"ours": make(ours), "stock": make(stock)}
            timings = interleave(contenders, rounds=rounds, round_time=0.05)
            r = ratio(timings, "ours", "stock")
            counts = {
                "ours": requests_per_call(ours.store.client, contenders["ours"]),
                "stock": requests_per_call(stock_client, contenders["stock"]),
            }
            rows.append(
                [
                    label,
                    fmt_time(timings["ours"].median),
                    fmt_time(timings["stock"].median),
                    "-",
                    "-",
                    f"{r.median:.2f}x",
                    f"{counts['ours']:.0f} / {counts['stock']:.0f} / -",
                ]
            )
            results[label] = {
                "seconds": {n: t.median for n, t in timings.items()},
                "ours_vs_stock": r.median,
                "requests": counts,
            }
            if label.startswith("store_result"):
                goals.append(Goal("store_result_and_get_vs_stock", r.median, 0.55))
                cpu = client_cpu(contenders, rounds=max(3, rounds // 3), calls=50)
                shares = [a / b for a, b in zip(cpu["ours"], cpu["stock"], strict=True)]
                share = statistics.median(shares)
                cpu_rows.append(
                    [
                        "store_result + get_task_meta (client CPU)",
                        fmt_time(statistics.median(cpu["ours"])),
                        fmt_time(statistics.median(cpu["stock"])),
                        "-",
                        "-",
                        f"{share:.2f}x",
                        f"{counts['ours']:.0f} / {counts['stock']:.0f} / -",
                    ]
                )
                results["client_cpu_per_result"] = {
                    "seconds": {n: statistics.median(v) for n, v in cpu.items()},
                    "ours_vs_stock": share,
                }
                goals.append(Goal("client_cpu_per_result_vs_stock", share, 0.75))

        # 100 ready results: our native mget against the stock join (one get per result)
        ids = [str(uuid.uuid4()) for _ in range(100)]
        for task_id in ids:
            ours.store_result(task_id, {"n": task_id}, "SUCCESS")
            stock.store_result(task_id, {"n": task_id}, "SUCCESS")

        def ours_many() -> Any:
            ours._cache.clear()
            return list(ours.get_many(ids, timeout=10))

        def stock_join() -> Any:
            stock._cache.clear()
            return ResultSet([AsyncResult(i, backend=stock) for i in ids]).join(timeout=10)

        contenders = {"ours": ours_many, "stock": stock_join}
        assert len(ours_many()) == 100 and len(stock_join()) == 100
        timings = interleave(contenders, rounds=max(5, rounds // 3), round_time=0.2)
        speedup = ratio(timings, "stock", "ours")
        counts = {
            "ours": requests_per_call(ours.store.client, ours_many, times=1),
            "stock": requests_per_call(stock_client, stock_join, times=1),
        }
        rows.append(
            [
                "100 ready results (get_many vs join)",
                fmt_time(timings["ours"].median),
                fmt_time(timings["stock"].median),
                "-",
                "-",
                f"{1 / speedup.median:.2f}x",
                f"{counts['ours']:.0f} / {counts['stock']:.0f} / -",
            ]
        )
        results["get_many_100"] = {
            "seconds": {n: t.median for n, t in timings.items()},
            "speedup_vs_stock_join": speedup.median,
            "requests": counts,
        }

        # The same with a modelled network round trip, where concurrency pays (see add_latency).
        for client in (ours.store.client, stock_client):
            add_latency(client, LATENCY)
        timings = interleave(contenders, rounds=3, round_time=0.5)
        slow = ratio(timings, "stock", "ours")
        rows.append(
            [
                f"100 ready results, +{LATENCY * 1000:.0f} ms per request",
                fmt_time(timings["ours"].median),
                fmt_time(timings["stock"].median),
                "-",
                "-",
                f"{1 / slow.median:.2f}x",
                f"{counts['ours']:.0f} / {counts['stock']:.0f} / -",
            ]
        )
        results["get_many_100_with_latency"] = {
            "seconds": {n: t.median for n, t in timings.items()},
            "speedup_vs_stock_join": slow.median,
        }
        goals.append(
            Goal("get_many_100_speedup_vs_stock_join_with_latency", slow.median, 15, at_most=False)
        )
        rows += cpu_rows

        print(f"## 2. Backend vs Celery's S3Backend and raw boto3 ({endpoint.name})\n")
        headers = ["operation", "ours", "stock", "raw boto3", "ours/raw", "ours/stock"]
        print(table([*headers, "requests ours / stock / raw"], rows))
        print()
        if server == "moto":  # the same bytes on every server: once is enough
            stored = bytes_stored(ours, stock, raw, bucket)
            results["bytes_stored"] = stored["results"]
            goals += stored["goals"]
    return {"results": results, "goals": goals, "server": endpoint.name}


def bytes_stored(ours: Any, stock: Any, raw: Any, bucket: str) -> dict[str, Any]:
    """Section 3: the size of the stored object, ours against the stock backend's plaintext."""
    samples = {"20-byte result": TINY[:20]} | {
        f"{label} JSON": celery_result(size) for label, size in PAYLOADS.items()
    }
    rows, results, goals = [], {}, []
    for label, value in samples.items():
        ours.set(f"size-{label}", value)
        stock.set(f"size-{label}", value)
        sizes = {
            name: raw.head_object(Bucket=bucket, Key=f"{prefix}size-{label}")["ContentLength"]
            for name, prefix in (("ours", "ours/"), ("stock", "stock/"))
        }
        share = sizes["ours"] / sizes["stock"]
        rows.append([label, f"{sizes['stock']:,}", f"{sizes['ours']:,}", f"{share:.2f}x"])
        results[label] = {**sizes, "ratio": share}
        if label in ("1 KiB JSON", "64 KiB JSON"):
            name = label.split()[0] + label.split()[1].lower()
            goals.append(Goal(f"bytes_stored_{name}_json_vs_stock", share, 0.5))
    print("## 3. Bytes stored: envelope vs the stock backend's plaintext object\n")
    print(table(["value", "stock (plaintext)", "ours (sealed)", "ours/stock"], rows))
    print()
    return {"results": results, "goals": goals}
