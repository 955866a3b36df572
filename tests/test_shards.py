"""Sharding: every key under the base path lands in exactly one shard, and a shard's listing
returns exactly the keys its range holds."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_s3_envelope.ops.celery_keys import CELERY_KEY_PREFIXES, celery_prefixes
from celery_s3_envelope.ops.shards import hex_boundaries, plan_shards
from celery_s3_envelope.store import S3Store

BASES = st.sampled_from(["", "results/", "celery/results-", "a"])
KEYPREFIXES = st.sampled_from(["", "app1", "tenant:", "x-"])
PARTS = st.integers(min_value=1, max_value=40)


def uuid_keys(prefixes: tuple[str, ...]) -> st.SearchStrategy[str]:
    ids = st.uuids().map(str) | st.text("0123456789abcdef-", max_size=40)
    return st.builds(lambda p, i: p + i, st.sampled_from(prefixes), ids)


ARBITRARY = st.text(
    st.characters(blacklist_categories=("Cs",), max_codepoint=0x10FFFF), max_size=30
)


@settings(max_examples=300, deadline=None)
@given(BASES, KEYPREFIXES, PARTS, st.data())
def test_every_key_under_the_base_path_lands_in_exactly_one_shard(
    base: str, keyprefix: str, parts: int, data: st.DataObject
) -> None:
    shards = plan_shards(base, keyprefix, parts)
    kinds = celery_prefixes(keyprefix)
    celery = uuid_keys(kinds) | st.sampled_from(kinds)  # the bare prefix too
    bounds = [s.end or "" for s in shards] + [s.start_after or "" for s in shards]
    edges = st.sampled_from(bounds)
    tails = st.lists(celery | ARBITRARY | edges, max_size=60)
    for tail in data.draw(tails):
        key = tail if tail.startswith(base) else base + tail
        homes = [shard.index for shard in shards if shard.contains(key)]
        assert len(homes) == 1, (key, homes)
        if any(key.startswith(base + kind) for kind in kinds):
            assert not shards[homes[0]].catch_all, key


def test_plan_is_in_key_order_with_a_catch_all_around_each_prefix() -> None:
    shards = plan_shards("r/", "", 4)
    assert len(shards) == 3 * (4 + 1) + 1
    assert [s.index for s in shards] == list(range(len(shards)))
    assert [s.catch_all for s in shards].count(True) == 4
    assert shards[1].prefix == "r/celery-task-meta-" and shards[1].end == "r/celery-task-meta-4000"
    assert hex_boundaries(2) == ["8000"]
    assert celery_prefixes("app") == tuple("app_" + p for p in CELERY_KEY_PREFIXES)


@pytest.fixture
def mixed_keys() -> list[str]:
    kinds = celery_prefixes("")
    keys = [f"r/{kinds[i % 3]}{uuid.UUID(int=i * 7919 * 2**100)}" for i in range(60)]
    keys += ["r/", "r/a", "r/celery-task-meta-", "r/celery-task-meta-8000", "r/zzz", "r/chord"]
    keys += ["r/celery-task-meta-\U0010ffff\U0010ffff", "other/celery-task-meta-1"]
    return keys


def test_each_shard_lists_exactly_its_own_keys(store: S3Store, mixed_keys: list[str]) -> None:
    for key in mixed_keys:
        store.put(key, b"x")
    shards = plan_shards("r/", "", 3)
    listed = [info.key for shard in shards for info in shard.objects(store)]
    assert sorted(listed) == sorted(k for k in mixed_keys if k.startswith("r/"))
    assert len(listed) == len(set(listed))
    for shard in shards:  # resuming inside a shard restarts after the checkpoint key
        keys = [info.key for info in shard.objects(store)]
        if len(keys) > 2:
            assert [i.key for i in shard.objects(store, resume_after=keys[1])] == keys[2:]
