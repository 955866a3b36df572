"""The ``--distributed`` / ``--resume RUN_ID`` path of ``rotate``, ``migrate``, ``scan --verify``.

Kept apart from ``ops_cli`` (which owns the options and the local path): this is the driver's
terminal side, sending the run through ``distributed.Driver``, showing shards as they end, and
printing the merged report in the local command's shape (docs/scale.md).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from .cli_sources import Prefix, Workspace
from .distributed import Driver
from .keyring import Keyring
from .ops_cli import print_sweep
from .shards import Shard


@dataclass(frozen=True)
class DistributedCall:
    """The ``--distributed`` / ``--resume RUN_ID`` path of a bucket-wide command: send the
    shards to the app's workers, show each shard as it ends, print the merged report."""

    workspace: Workspace
    target: Prefix
    shards: int
    queue: str | None
    resume_run: str | None
    timeout: float | None
    as_json: bool

    def __post_init__(self) -> None:
        if self.workspace.app is None:
            raise click.UsageError(
                "--distributed runs on the app's workers: run as `celery -A proj envelope`"
            )

    def __call__(self, operation: str, keyring: Keyring, options: dict[str, Any]) -> None:
        backend = self.workspace.backend()
        prefixes = tuple(
            p.decode() if isinstance(p, bytes) else str(p)
            for p in (backend.task_keyprefix, backend.group_keyprefix, backend.chord_keyprefix)
        )
        store = self.workspace.store(self.target.bucket)
        driver = Driver(self.workspace.app, store, self.target.prefix, queue=self.queue)
        if self.resume_run:
            try:
                state = driver.resume(self.resume_run, operation)
            except LookupError as exc:
                raise click.ClickException(str(exc)) from None
        else:
            state = driver.start(
                operation, keyring, options, parts=self.shards, key_prefixes=prefixes
            )
        click.echo(f"{operation}: run {state.run_id} sent to the workers", err=True)

        def shown(document: dict[str, Any], ended: int, total: int) -> None:
            if not self.as_json:
                scanned = document.get("counts", {}).get("scanned", 0)
                click.echo(
                    f"  shard {document['shard']['index']} {document['state']}: "
                    f"{scanned:,} objects ({ended}/{total} shards)",
                    err=True,
                )

        def silent() -> None:
            click.echo(
                "Warning: no shard has started yet: are workers running, consuming "
                f"{self.queue or 'the default queue'}, with celery_s3_envelope.distributed "
                "in the app's include?",
                err=True,
            )

        try:
            result = driver.wait(state, timeout=self.timeout, on_shard=shown, on_silence=silent)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: resume with --resume {state.run_id}", err=True)
            sys.exit(130)
        if self.as_json:
            click.echo(json.dumps({"target": self.target.name, **result.to_dict()}, indent=2))
        else:
            print_sweep(result.report, self.target, as_json=False)
            click.echo(f"  run {result.run_id}", err=True)
        for shard in result.failed_shards:
            reason = shard.get("reason") or shard.get("state", "pending")
            where = Shard.from_dict(shard["shard"]).describe()
            click.echo(f"Error: shard {shard['shard']['index']} {where}: {reason}", err=True)
        if not result.finished:
            click.echo(f"not finished: resume with --resume {result.run_id}", err=True)
        if not result.ok:
            sys.exit(1)
