"""The shard task of ``rotate`` / ``migrate`` / ``scan --verify --distributed`` (docs/scale.md).

Workers must import this module: add ``"celery_s3_envelope.distributed"`` to the app's
``include`` (or ``imports``). It holds the task only; the engine (plan, run state in the bucket,
the sweep of one shard, the driver) is ``ops.runs``. Nothing here imports click.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import shared_task  # type: ignore[import-untyped]

from .ops.context import Context
from .ops.runs import TASK_NAME, RunState, run_shard

__all__ = ["MAX_RETRIES", "TASK_NAME", "sweep_shard"]

MAX_RETRIES = 3
RETRY_DELAY = 2.0


@shared_task(  # type: ignore[untyped-decorator]
    bind=True,
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=MAX_RETRIES,
)
def sweep_shard(task: Any, job: dict[str, Any]) -> str:
    """Sweep one shard; idempotent, so a redelivered or re-sent shard only finishes the rest."""
    context = Context(app=task.app)
    state = RunState(context.store(job["bucket"]), job["prefix"], job["run_id"])
    attempt = int(task.request.retries)
    return run_shard(state, context, job, attempt=attempt, retry=partial(_retry, task, attempt))


def _retry(task: Any, attempt: int, exc: BaseException) -> None:
    if attempt < MAX_RETRIES:
        raise task.retry(exc=exc, countdown=RETRY_DELAY)
