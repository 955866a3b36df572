"""A bounded task-event receiver (the redaction tests): a thread consuming the app's broker.

Every wait has a timeout and ``close`` always stops the thread, so a missing event fails a test
instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

READY_TIMEOUT = 10.0
POLL = 0.05


class EventCollector:
    """Every event the app's broker delivers, in arrival order (``events``)."""

    def __init__(self, app: Celery) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._connection = app.connection_for_write()
        collector = self

        class Receiver(app.events.Receiver):  # type: ignore[name-defined,misc]
            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)
                collector._ready.set()

        self._receiver = Receiver(self._connection, handlers={"*": self._add})
        self._thread = threading.Thread(target=self._run, name="event-collector", daemon=True)

    def _add(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        try:
            for _ in self._receiver.consume(safety_interval=POLL, wakeup=False):
                pass
        except BaseException as exc:  # reported by wait_for / start
            self._error = exc
            self._ready.set()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"the event receiver did not start: {self._error!r}")

    def close(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=5)
        self._connection.release()

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        with self._lock:
            return [event for event in self.events if event["type"] in types]

    def wait_for(self, done: Callable[[EventCollector], bool], timeout: float) -> bool:
        """True once ``done(self)`` holds, False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if self._error is not None:
                raise RuntimeError(f"the event receiver failed: {self._error!r}")
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        return True


@contextmanager
def collecting_events(app: Celery) -> Iterator[EventCollector]:
    collector = EventCollector(app)
    collector.start()
    try:
        yield collector
    finally:
        collector.close()
