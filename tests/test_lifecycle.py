"""Result expiry by an S3 lifecycle rule: merged with the bucket's other rules, idempotent."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from click.testing import Result

from celery_s3_envelope import lifecycle
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.store import S3Store
from support.cli import invoke

UNRELATED = {
    "ID": "archive-logs",
    "Filter": {"Prefix": "logs/"},
    "Status": "Enabled",
    "Expiration": {"Days": 30},
}


def run(app: Celery, *args: str) -> Result:
    return invoke(envelope, "lifecycle", "apply", *args, app=app)


@pytest.mark.parametrize(
    ("expires", "days"),
    [(1, 1), (3600, 1), (86400, 1), (86401, 2), (timedelta(days=7), 7), (timedelta(hours=25), 2)],
)
def test_expiry_rounds_up_to_whole_days(expires: float | timedelta, days: int) -> None:
    assert lifecycle.whole_days(expires) == days


def test_plan_keeps_other_rules_and_replaces_ours() -> None:
    old_ours = lifecycle.our_rules("celery/", 9)
    new_ours = lifecycle.our_rules("celery/", 2)
    plan = lifecycle.plan([UNRELATED, *old_ours], new_ours)
    assert plan.merged == [UNRELATED, *new_ours] and plan.changes
    assert not lifecycle.plan(plan.merged, new_ours).changes


def test_apply_merges_is_idempotent_and_reads_back_equal(
    make_app: Callable[..., Celery], store: S3Store
) -> None:
    store.put_lifecycle_rules([UNRELATED])
    app = make_app(s3_base_path="celery/", result_expires=86400 + 1)

    dry = run(app, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["state"] == "would change"
    assert not lifecycle.Plan(store.lifecycle_rules(), [UNRELATED]).changes  # nothing written

    first = run(app, "--json")
    assert first.exit_code == 0, first.output
    written: list[dict[str, Any]] = json.loads(first.stdout)["rules"]
    assert json.loads(first.stdout)["state"] == "applied"
    assert written == [UNRELATED, *lifecycle.our_rules("celery/", 2)]  # 1 day + 1 s -> 2 days
    assert not lifecycle.Plan(store.lifecycle_rules(), written).changes  # read back equal

    again = run(app, "--json")
    assert json.loads(again.stdout)["state"] == "unchanged"


def test_failure_expiry_gives_one_tag_filtered_rule_per_class(
    make_app: Callable[..., Celery], store: S3Store
) -> None:
    app = make_app(s3_base_path="celery/", result_expires=86400, result_failure_expires=86400 * 7)
    result = run(app, "--json")
    assert result.exit_code == 0, result.output
    rules = {rule["ID"]: rule for rule in store.lifecycle_rules()}
    default = rules["celery-s3-envelope-expiry-default"]
    failure = rules["celery-s3-envelope-expiry-failure"]
    assert default["Expiration"]["Days"] == 1 and failure["Expiration"]["Days"] == 7
    # Read back in whatever form the server uses (RGW flattens an And of a prefix and one tag).
    assert lifecycle.canonical_filter(failure) == ("celery/", (("celery-expiry-class", "failure"),))
    assert lifecycle.canonical_filter(default) == ("celery/", (("celery-expiry-class", "default"),))
    again = run(app, "--json")
    assert json.loads(again.stdout)["state"] == "unchanged"


def test_lifecycle_expiry_setting_turns_off_celerys_cleanup_task(
    make_app: Callable[..., Celery],
) -> None:
    assert make_app(envelope_expiry="lifecycle").backend.supports_autoexpire is True
    assert make_app().backend.supports_autoexpire is False
    with pytest.raises(ImproperlyConfigured, match="envelope_expiry"):
        make_app(envelope_expiry="sometimes").backend  # noqa: B018
