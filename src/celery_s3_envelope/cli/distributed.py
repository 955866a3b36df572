"""``--distributed`` / ``--resume RUN_ID`` on ``rotate``, ``migrate`` and ``scan --verify``: the
driver's terminal side. It sends the run through ``ops.runs.Driver``, shows shards as they end,
and prints the merged report in the local command's shape (docs/scale.md).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from ..keyring import Keyring
from ..ops.context import Context, Prefix
from .reports import print_sweep
from .status import ConfigurationError, RuntimeFailure, Status
from .terminal import safe

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--distributed",
        is_flag=True,
        help="Run as one Celery task per shard on the app's own workers.",
    ),
    click.option(
        "--shards",
        default=16,
        show_default=True,
        type=click.IntRange(1, 4096),
        help="Key ranges per Celery key prefix (--distributed).",
    ),
    click.option("--queue", metavar="QUEUE", help="Queue for the shard tasks."),
    click.option(
        "--resume",
        "resume_run",
        metavar="RUN_ID",
        help="Re-send the shards of this distributed run that did not finish.",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(0, min_open=True),
        help="Stop waiting after SECONDS (the run goes on; --resume it later).",
    ),
)


@dataclass(frozen=True)
class Distributed:
    """A distributed run as asked for on the command line: send the shards to the app's
    workers, show each shard as it ends, print the merged report."""

    shards: int
    queue: str | None
    resume_run: str | None
    timeout: float | None

    def run(
        self,
        context: Context,
        target: Prefix,
        operation: str,
        keyring: Keyring,
        options: dict[str, Any],
        *,
        as_json: bool,
    ) -> None:
        """Exit status 1 when a shard failed, the run did not finish, or an object failed."""
        if context.app is None:
            raise click.UsageError(
                "--distributed runs on the app's workers: run as `celery -A proj envelope`"
            )
        from ..ops.runs import Driver  # the engine and its store: only when used
        from ..ops.shards import Shard

        backend = context.backend()
        prefixes = tuple(
            p.decode() if isinstance(p, bytes) else str(p)
            for p in (backend.task_keyprefix, backend.group_keyprefix, backend.chord_keyprefix)
        )
        driver = Driver(context.app, context.store(target.bucket), target.prefix, queue=self.queue)
        try:
            driver.check_workers()
        except LookupError as exc:
            raise RuntimeFailure(safe(exc)) from None
        if self.resume_run:
            try:
                state = driver.resume(self.resume_run, operation, options)
            except LookupError as exc:
                raise ConfigurationError(safe(exc)) from None
        else:
            state = driver.start(
                operation, keyring, options, parts=self.shards, key_prefixes=prefixes
            )
        click.echo(f"{operation}: run {state.run_id} sent to the workers", err=True)

        def shown(document: dict[str, Any], ended: int, total: int) -> None:
            if not as_json:
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
            sys.exit(Status.INTERRUPTED)
        if as_json:
            click.echo(json.dumps({"target": target.name, **result.to_dict()}, indent=2))
        else:
            print_sweep(result.report, target, as_json=False)
            click.echo(f"  run {result.run_id}", err=True)
        for shard in result.failed_shards:
            reason = shard.get("reason") or shard.get("state", "pending")
            where = Shard.from_dict(shard["shard"]).describe()
            index = shard["shard"]["index"]
            click.echo(f"Error: shard {index} {safe(where)}: {safe(reason)}", err=True)
        if not result.finished:
            click.echo(f"not finished: resume with --resume {result.run_id}", err=True)
        if not result.ok:
            sys.exit(Status.DAMAGED)


def distributed_options(command: F) -> F:
    """``--distributed``, ``--shards``, ``--queue``, ``--resume``, ``--timeout`` (docs/scale.md),
    handed to the command as one ``distributed`` argument: a ``Distributed``, or None for a
    local run. The local-only ``--limit`` and ``--resume-from`` are refused beside it."""

    @functools.wraps(command)
    def packed(
        *args: Any,
        distributed: bool,
        shards: int,
        queue: str | None,
        resume_run: str | None,
        timeout: float | None,
        **kwargs: Any,
    ) -> Any:
        request = None
        if distributed or resume_run:
            if kwargs.get("limit") is not None or kwargs.get("resume_from") is not None:
                raise click.UsageError("--limit and --resume-from are local; use --resume RUN_ID")
            request = Distributed(shards, queue, resume_run, timeout)
        return command(*args, distributed=request, **kwargs)

    wrapped: Any = packed
    for option in reversed(_OPTIONS):
        wrapped = option(wrapped)
    return wrapped  # type: ignore[no-any-return]
