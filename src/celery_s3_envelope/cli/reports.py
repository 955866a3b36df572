"""How the bulk commands show their work: a progress line on a terminal, and the report (text,
or ``--json`` for scripts and audit evidence)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..ops.context import Prefix
from ..ops.sweep import SweepReport
from .terminal import safe


class Progress:
    """``rotate: 1,234 objects, 456/s`` on stderr, redrawn at most 10 times a second."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.count = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, _result: object) -> None:
        self.count += 1
        now = time.monotonic()
        if self.enabled and now - self._drawn >= 0.1:
            self._drawn = now
            rate = self.count / max(now - self.started, 1e-9)
            click.echo(f"\r{self.label}: {self.count:,} objects, {rate:,.0f}/s", nl=False, err=True)

    def close(self) -> None:
        if self.enabled and self.count:
            click.echo(err=True)


def with_progress(label: str, as_json: bool, run: Callable[[Callable[[object], None]], Any]) -> Any:
    progress = Progress(label, enabled=not as_json)
    try:
        return run(progress)
    finally:
        progress.close()


DRY_RUN_LABELS = {"rewrapped": "would rewrap", "sealed": "would seal"}
"""What a dry run's text report calls what it did not do (``--json`` keeps the field names)."""
TENANTS_SHOWN = 20
"""Tenants a text scan lists one by one (beyond it: the shredded ones; ``--json``: all)."""
PLAINTEXT_SHOWN = 10
"""Plaintext keys a text report lists before it summarises (``--list-plaintext``: all it kept)."""


def print_sweep(report: SweepReport, target: Prefix, as_json: bool) -> None:
    document = report.to_dict()
    if as_json:
        click.echo(json.dumps({"target": target.name, **document}, indent=2))
        return
    title = f"{report.operation} {safe(target.name)}"
    if report.target_kek:
        title += f" -> KEK {safe(report.target_kek)}"
    click.echo(title + (" (dry run: nothing written)" if report.dry_run else ""))
    click.echo(f"  {'scanned':<12} {document['scanned']:>10,}")
    for outcome in report.outcomes:
        label = (
            DRY_RUN_LABELS.get(outcome.value, outcome.value) if report.dry_run else outcome.value
        )
        line = f"  {label:<12} {document[outcome.value]:>10,}"
        if outcome.value in ("rewrapped", "sealed", "verified") and document["by_kek"]:
            by_kek = document["by_kek"].items()
            line += "   (" + ", ".join(f"{safe(k)}: {n:,}" for k, n in by_kek) + ")"
        click.echo(line)
    click.echo(
        f"  elapsed {document['elapsed_seconds']:.1f} s, "
        f"{document['objects_per_second']:,.0f} objects/s; last key: {safe(document['last_key'])}"
    )
    for failure in document["failures"]:
        click.echo(f"Error: {safe(failure['key'])}: {safe(failure['reason'])}", err=True)


def interrupted(report: SweepReport | None) -> None:
    last = report.last_key if report else None
    hint = f" resume with --resume-from {safe(repr(last))}" if last else " nothing was done"
    click.echo(f"\ninterrupted:{hint}", err=True)


def print_scan(
    report: Any,
    checked: SweepReport | None,
    target: Prefix,
    as_json: bool,
    *,
    list_plaintext: bool = False,
) -> None:
    from ..ops.scan import failure_classes

    document = {**report.to_dict(), "authenticated": checked is not None}
    if checked is not None:
        document["verify"] = {
            **checked.to_dict(),
            "failures_by_reason": dict(failure_classes(checked)),
        }
    if as_json:
        click.echo(json.dumps({"target": target.name, **document}, indent=2))
        return
    click.echo(f"scan {safe(target.name)}: {document['objects']:,} objects")
    for state in ("sealed", "plaintext", "foreign", "unreadable"):
        stored = document["stored_bytes"][state]
        click.echo(f"  {state:<10} {document[state]:>10,}   {stored:>14,} bytes stored")
    if document["sealed_by_kek"]:
        click.echo("  sealed by KEK:")
        click.echo(
            f"    {'kek':<16} {'ver':>3} {'objects':>10} {'stored':>14} {'original':>14}"
            "  oldest / newest"
        )
        for group in document["sealed_by_kek"]:
            click.echo(
                f"    {safe(group['kek_id']):<16} {group['version']:>3} {group['objects']:>10,} "
                f"{group['stored_bytes']:>14,} {group['payload_bytes']:>14,}"
                f"  {group['oldest']} / {group['newest']}"
            )
    if document["tenants"]:
        tenants = document["tenants"]
        shredded = [t for t in tenants if t["shredded"]]
        line = f"  tenants    {len(tenants):>10,}"
        if document["shredded"] is not None:
            line += (
                f"   ({len(shredded):,} shredded, holding {document['shredded']:,} objects: "
                "unreadable by design, not damaged)"
            )
        click.echo(line)
        shown = tenants if len(tenants) <= TENANTS_SHOWN else shredded[:TENANTS_SHOWN]
        for tenant in shown:
            state = " shredded" if tenant["shredded"] else ""
            click.echo(f"    {safe(tenant['tenant']):<24} {tenant['objects']:>10,}{state}")
        if len(tenants) > len(shown):
            click.echo(f"    ... {len(tenants) - len(shown):,} more tenants (--json lists all)")
    if checked is None and document["sealed"]:
        click.echo("  sealed: by header only, not authenticated (--verify opens each envelope)")
    listed = document["plaintext_keys"]
    shown = listed if list_plaintext else listed[:PLAINTEXT_SHOWN]
    for key in shown:
        click.echo(f"Plaintext: {safe(key)}", err=True)
    if document["plaintext"] > len(shown):
        more = document["plaintext"] - len(shown)
        hint = "" if list_plaintext else " (--list-plaintext shows the first 100; --json too)"
        click.echo(f"Plaintext: ... and {more:,} more{hint}", err=True)
    if checked is not None:
        verified = document["verify"]
        click.echo(
            f"  verified {verified['verified']:,} with the keyring, {verified['failed']:,} failed"
            + (f", {verified['shredded']:,} shredded" if verified["shredded"] else "")
        )
        for failure in verified["failures"]:
            click.echo(f"Error: {safe(failure['key'])}: {safe(failure['reason'])}", err=True)
