"""Key rotation: every envelope moves to the active KEK, and nothing a live writer wrote is lost."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import celery_s3_envelope as cse
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.sweep import Outcome
from celery_s3_envelope.store import S3Store

PREFIX = "celery/"


def task_key(i: int) -> str:
    return f"{PREFIX}celery-task-meta-{i:08d}-0000-4000-8000-000000000000"


def value(i: int, version: str = "v1") -> str:
    return f'{{"status": "SUCCESS", "result": {{"n": {i}, "version": "{version}"}}}}'


def fill(store: S3Store, keyring: cse.Keyring, count: int) -> list[str]:
    keys = [task_key(i) for i in range(count)]

    def put(i: int) -> None:
        store.put(keys[i], cse.seal(value(i), key=keys[i], keyring=keyring))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    return keys


@pytest.fixture
def keyrings() -> tuple[cse.Keyring, cse.Keyring, cse.Keyring]:
    """(k1 active), (k1 decrypt, k2 active), (k2 alone)."""
    k1 = cse.Keyring.generate("k1")
    k2 = cse.LocalKey("k2", os.urandom(32), cse.KeyState.ACTIVE)
    both = k1.with_entry(k2, activate=True)
    return k1, both, cse.Keyring([k2])


def kek_of(store: S3Store, key: str) -> str:
    data = store.get(key)
    assert data is not None
    return cse.inspect(data).kek_id


def test_rotation_moves_every_object_and_never_clobbers_a_racing_writer(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    k1_only, both, k2_only = keyrings
    keys = fill(store, k1_only, 2000)
    raced = set(keys[::20])  # 100 keys a worker rewrites while rotation holds them
    writes: list[str] = []
    write_now = threading.Event()
    written = threading.Event()
    pending: list[str] = []

    def writer() -> None:  # a worker storing new results, under the new active KEK
        while write_now.wait(timeout=60):
            write_now.clear()
            key = pending.pop()
            i = keys.index(key)
            store.put(key, cse.seal(value(i, "v2"), key=key, keyring=both))
            writes.append(key)
            written.set()
            if len(writes) == len(raced):
                return

    thread = threading.Thread(target=writer)
    thread.start()
    original_get = store.fetch
    lock = threading.Lock()

    def get_then_race(key: str) -> Any:
        got = original_get(key)
        if key in raced:  # the worker writes between rotation's GET and its conditional PUT
            with lock:
                pending.append(key)
                written.clear()
                write_now.set()
                assert written.wait(timeout=30)
        return got

    store.fetch = get_then_race  # type: ignore[method-assign]
    report = Rotation(store, both, prefix=PREFIX, workers=16).run()
    store.fetch = original_get  # type: ignore[method-assign]
    thread.join(timeout=30)

    assert len(writes) == 100
    assert report.ok, report.failures
    assert report.counts["scanned"] == 2000
    assert report.counts[Outcome.CHANGED] == 100
    assert report.counts[Outcome.REWRAPPED] == 1900
    assert report.by_kek == {"k1": 1900}
    opened = store.get_many(keys)
    for i, key in enumerate(keys):
        data = opened[key]
        assert data is not None
        expected = value(i, "v2" if key in raced else "v1")
        assert cse.unseal(data, keyring=k2_only, key=key) == expected  # k2 alone opens all


def test_interrupted_rotation_resumes_and_every_object_always_opens(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    k1_only, both, k2_only = keyrings
    keys = fill(store, k1_only, 400)
    original_put = store.put
    puts = 0

    def failing_put(*args: Any, **kwargs: Any) -> str:
        nonlocal puts
        puts += 1
        if puts > 150:
            raise RuntimeError("injected crash")
        return original_put(*args, **kwargs)

    store.put = failing_put  # type: ignore[method-assign]
    rotation = Rotation(store, both, prefix=PREFIX, workers=8)
    with pytest.raises(RuntimeError, match="injected crash"):
        rotation.run()
    store.put = original_put  # type: ignore[method-assign]
    assert rotation.report is not None and rotation.report.last_key is not None
    stopped_at = rotation.report.last_key

    data = store.get_many(keys)
    states = {cse.inspect(d).kek_id for d in data.values() if d}
    assert states == {"k1", "k2"}  # part-way: a mix, and every object opens with {k1, k2}
    for i, key in enumerate(keys):
        assert cse.unseal(data[key] or b"", keyring=both, key=key) == value(i)
    assert all(kek_of(store, k) == "k2" for k in keys if k <= stopped_at)

    resumed = Rotation(store, both, prefix=PREFIX, resume_from=stopped_at).run()
    assert resumed.ok and resumed.counts["scanned"] == len([k for k in keys if k > stopped_at])
    final = store.get_many(keys)
    for i, key in enumerate(keys):
        assert cse.unseal(final[key] or b"", keyring=k2_only, key=key) == value(i)


def test_other_prefixes_and_plaintext_objects_are_untouched(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    k1_only, both, _ = keyrings
    fill(store, k1_only, 20)
    outside = "elsewhere/celery-task-meta-x"
    store.put(outside, cse.seal("other prefix", key=outside, keyring=k1_only))
    plaintext_key = f"{PREFIX}celery-task-meta-plain"
    store.put(plaintext_key, b'{"status": "SUCCESS", "result": 1}')
    before = {info.key: info.etag for info in store.list("")}

    report = Rotation(store, both, prefix=PREFIX).run()

    after = {info.key: info.etag for info in store.list("")}
    assert report.counts[Outcome.PLAINTEXT] == 1 and report.counts[Outcome.REWRAPPED] == 20
    assert after[outside] == before[outside] and after[plaintext_key] == before[plaintext_key]
    assert store.get(plaintext_key) == b'{"status": "SUCCESS", "result": 1}'
    assert kek_of(store, outside) == "k1"


def test_dry_run_and_limit_write_nothing_beyond_their_bound(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    k1_only, both, _ = keyrings
    keys = fill(store, k1_only, 30)
    dry = Rotation(store, both, prefix=PREFIX, dry_run=True).run()
    assert dry.dry_run and dry.counts[Outcome.REWRAPPED] == 30
    assert {kek_of(store, k) for k in keys} == {"k1"}
    limited = Rotation(store, both, prefix=PREFIX, limit=10).run()
    assert limited.counts["scanned"] == 10 and limited.last_key == keys[9]
    assert [kek_of(store, k) for k in keys].count("k2") == 10


def test_failures_are_listed_with_key_and_reason_and_do_not_stop_the_run(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    k1_only, both, _ = keyrings
    keys = fill(store, k1_only, 10)
    tampered = bytearray(store.get(keys[3]) or b"")
    tampered[30] ^= 1  # inside the salt
    store.put(keys[3], bytes(tampered))
    moved = cse.seal("sealed for another key", key=keys[0], keyring=k1_only)
    store.put(keys[5], moved)  # copied onto another task's key
    stranger = cse.Keyring.generate("k-unknown")
    store.put(keys[7], cse.seal("x", key=keys[7], keyring=stranger))

    report = Rotation(store, both, prefix=PREFIX).run()

    assert not report.ok
    reasons = dict(report.failures)
    assert set(reasons) == {keys[3], keys[5], keys[7]}
    assert "IntegrityError" in reasons[keys[3]] and "IntegrityError" in reasons[keys[5]]
    assert "UnknownKey" in reasons[keys[7]] and "k-unknown" in reasons[keys[7]]
    assert report.counts[Outcome.REWRAPPED] == 7
    assert store.get(keys[3]) == bytes(tampered)  # failed objects are left as they were


def test_rewrap_keeps_the_payload_and_reencrypt_replaces_the_data_key(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    k1_only, both, k2_only = keyrings
    keys = fill(store, k1_only, 4)
    before = {k: store.get(k) or b"" for k in keys}
    Rotation(store, both, prefix=PREFIX, verify=True, limit=2).run()
    report = Rotation(store, both, prefix=PREFIX, reencrypt=True, resume_from=keys[1]).run()
    assert report.counts[Outcome.REWRAPPED] == 2
    current = Rotation(store, both, prefix=PREFIX).run()
    assert current.counts[Outcome.CURRENT] == 4 and current.counts[Outcome.REWRAPPED] == 0
    for i, key in enumerate(keys):
        after = store.get(key) or b""
        old, new = cse.inspect(before[key]), cse.inspect(after)
        same_payload = after[new.header_size :] == before[key][old.header_size :]
        assert same_payload == (i < 2)  # rewrap: ciphertext kept; re-encrypt: fresh DEK
        assert (new.salt == old.salt) == (i < 2)
        assert cse.unseal(after, keyring=k2_only, key=key) == value(i)


def test_rotation_keeps_object_tags(
    store: S3Store, keyrings: tuple[cse.Keyring, cse.Keyring, cse.Keyring]
) -> None:
    """PutObject replaces the tag set; the expiry-class tag decides which lifecycle rule applies."""
    k1_only, both, _ = keyrings
    tagged, plain = f"{PREFIX}celery-task-meta-tagged", f"{PREFIX}celery-task-meta-plain"
    store.put(
        tagged, cse.seal("x", key=tagged, keyring=k1_only), tags={"celery-expiry-class": "failure"}
    )
    store.put(plain, cse.seal("y", key=plain, keyring=k1_only))
    report = Rotation(store, both, prefix=PREFIX).run()
    assert report.counts[Outcome.REWRAPPED] == 2
    assert store.get_tags(tagged) == {"celery-expiry-class": "failure"}
    assert store.get_tags(plain) == {}
    assert kek_of(store, tagged) == "k2"
