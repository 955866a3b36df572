"""Result expiry by an S3 lifecycle rule instead of Celery's daily ``backend_cleanup`` task.

``plan`` computes the bucket's rules with ours merged in: other rules are kept as they are, ours
(identified by their ``ID``) are replaced. With ``result_failure_expires`` set, the backend tags
every object ``celery-expiry-class=default|failure``, and two tag-filtered rules expire each
class after its own number of days; otherwise one rule expires everything under the prefix.
S3 counts lifecycle days from an object's creation and acts on whole days, so expiry times are
rounded *up* to whole days (a result is never deleted earlier than ``result_expires`` says).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

RULE_ID = "celery-s3-envelope-expiry"
EXPIRY_TAG = "celery-expiry-class"  # the backend's tag, written when result_failure_expires is set
DAY = 86400


def whole_days(expires: float | timedelta) -> int:
    """Seconds (or a timedelta) rounded up to whole days, at least one."""
    seconds = expires.total_seconds() if isinstance(expires, timedelta) else float(expires)
    if seconds <= 0:
        raise ValueError("an expiry must be positive")
    return max(1, math.ceil(seconds / DAY))


def our_rules(prefix: str, days: int, failure_days: int | None = None) -> list[dict[str, Any]]:
    """The rules that expire results under ``prefix``."""
    if failure_days is None:
        return [
            {
                "ID": RULE_ID,
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "Expiration": {"Days": days},
            }
        ]
    return [
        {
            "ID": f"{RULE_ID}-{expiry_class}",
            "Filter": {
                "And": {"Prefix": prefix, "Tags": [{"Key": EXPIRY_TAG, "Value": expiry_class}]}
            },
            "Status": "Enabled",
            "Expiration": {"Days": class_days},
        }
        for expiry_class, class_days in (("default", days), ("failure", failure_days))
    ]


def is_ours(rule: dict[str, Any]) -> bool:
    return str(rule.get("ID", "")).startswith(RULE_ID)


@dataclass(frozen=True)
class Plan:
    current: list[dict[str, Any]]
    merged: list[dict[str, Any]]

    @property
    def changes(self) -> bool:
        return _normalized(self.current) != _normalized(self.merged)


def plan(current: list[dict[str, Any]], ours: list[dict[str, Any]]) -> Plan:
    """``current`` with our rules replaced by ``ours`` (others kept, in their order)."""
    kept = [rule for rule in current if not is_ours(rule)]
    return Plan(current=current, merged=kept + ours)


def canonical_filter(rule: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A rule's filter as (prefix, sorted tags), whatever form the server returns it in: Ceph
    RGW 16 answers an ``And`` of a prefix and one tag as ``{"Prefix": ..., "Tag": {...}}``."""
    raw = rule.get("Filter") or {}
    parts = raw.get("And") or raw
    prefix = parts.get("Prefix", rule.get("Prefix", "")) or ""
    tags = list(parts.get("Tags") or []) + ([parts["Tag"]] if parts.get("Tag") else [])
    return str(prefix), tuple(sorted((str(t["Key"]), str(t["Value"])) for t in tags))


def _normalized(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules as compared: servers may echo a rule with empty fields added, its filter in another
    equivalent form, or the rules in another order."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in sorted(value.items()) if v not in (None, [], {})}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    def canonical(rule: dict[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in rule.items() if k not in ("Filter", "Prefix")}
        return {**clean(rest), "Filter": canonical_filter(rule)}

    return sorted((canonical(rule) for rule in rules), key=lambda rule: str(rule.get("ID", "")))
