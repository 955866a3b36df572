"""``store_result`` by conditional writes: one request for a new task id, two with the read that
follows, and a SUCCESS never overwritten, not even by a writer racing it between its read and its
write (which Celery's own read-then-write flow loses). Requests are counted on the wire, and the
races are held in threads at the exact request where they matter, on whichever server the suite
runs against. Where a bucket does not honour ``If-None-Match`` (Ceph RGW 16 on a versioned
bucket), the backend detects it once and falls back to Celery's flow."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import states
from celery.backends.s3 import S3Backend

import celery_s3_envelope.backend as backend_module
from celery_s3_envelope.backend import EnvelopeS3Backend
from support.apps import MakeApp, backend_of
from support.s3 import S3Endpoint, count_requests, error_response, fresh_bucket

HOLD_TIMEOUT = 30.0


def warmed(backend: EnvelopeS3Backend) -> EnvelopeS3Backend:
    """The backend after its once-per-process probe of the bucket (``store_result`` of a task
    id of its own), so that counts below are those of every later call."""
    backend.store_result("warm-up", "probe done", states.SUCCESS)
    return backend


def test_the_bucket_is_probed_once_per_process(make_app: MakeApp, s3_endpoint: S3Endpoint) -> None:
    backend = backend_of(make_app())
    with count_requests(backend.store.client) as first:
        backend.store_result("t1", 1, states.SUCCESS)
    other = backend_of(make_app())  # another backend (thread, app) on the same bucket
    with count_requests(other.store.client) as second:
        other.store_result("t2", 2, states.SUCCESS)
    # The probe: a fresh key written create-only twice (the second refused), then deleted.
    probe = ["PUT If-None-Match", "PUT If-None-Match", "DELETE"]
    assert first.conditional == [*probe, "PUT If-None-Match"]
    assert second.conditional == ["PUT If-None-Match"]
    listed = s3_endpoint.client().list_objects_v2(Bucket=backend.bucket_name)
    keys = [obj["Key"] for obj in listed.get("Contents", [])]
    assert sorted(keys) == ["celery-task-meta-t1", "celery-task-meta-t2"]  # no probe left


def test_a_new_task_id_is_one_request_and_reading_it_back_one_more(
    backend: EnvelopeS3Backend,
) -> None:
    warmed(backend)
    with count_requests(backend.store.client) as store:
        backend.store_result("new-task", {"n": 1}, states.SUCCESS)
    assert store.conditional == ["PUT If-None-Match"]
    backend._cache.clear()
    with count_requests(backend.store.client) as both:
        backend.store_result("another-task", {"n": 2}, states.SUCCESS)
        meta = backend.get_task_meta("another-task")
    assert both.conditional == ["PUT If-None-Match", "GET"]
    assert meta["status"] == states.SUCCESS and meta["result"] == {"n": 2}


def test_stock_celery_makes_four_requests_for_the_same(make_app: MakeApp) -> None:
    stock = S3Backend(app=make_app())
    client = stock._s3_resource.meta.client
    with count_requests(client) as both:
        stock.store_result("stock-task", {"n": 1}, states.SUCCESS)
        stock._cache.clear()
        stock.get_task_meta("stock-task")
    assert both.methods == ["HEAD", "PUT", "HEAD", "GET"]


def test_a_result_another_worker_stored_is_read_then_replaced_only_over_what_was_read(
    two_writers: tuple[EnvelopeS3Backend, EnvelopeS3Backend],
) -> None:
    first, second = two_writers
    second.store_result("t", "progress", states.STARTED)
    with count_requests(first.store.client) as update:
        first.store_result("t", "done", states.SUCCESS)
    assert update.conditional == ["PUT If-None-Match", "GET", "PUT If-Match"]
    with count_requests(second.store.client) as late:
        second.store_result("t", ValueError("late duplicate"), states.FAILURE)
    # It had stored STARTED: its If-Match on that fails, and it reads the SUCCESS: no write.
    assert late.conditional == ["PUT If-Match", "PUT If-None-Match", "GET"]
    first._cache.clear()
    assert first.get_task_meta("t")["result"] == "done"


def test_started_then_success_from_one_worker_is_one_request_each(
    backend: EnvelopeS3Backend,
) -> None:
    """A worker with task_track_started stores STARTED, then the outcome: it remembers the
    ETag of its STARTED and writes over exactly that."""
    warmed(backend)
    with count_requests(backend.store.client) as started:
        backend.store_result("tracked", None, states.STARTED)
    with count_requests(backend.store.client) as done:
        backend.store_result("tracked", "done", states.SUCCESS)
    assert started.conditional == ["PUT If-None-Match"]
    assert done.conditional == ["PUT If-Match"]
    with count_requests(backend.store.client) as late:  # a SUCCESS is not remembered
        backend.store_result("tracked", ValueError("late"), states.FAILURE)
    assert late.conditional == ["PUT If-None-Match", "GET"]
    backend._cache.clear()
    assert backend.get_task_meta("tracked")["result"] == "done"


class Hold:
    """Holds one request of a client (the first matching ``condition``) until released, and
    says when it is being held."""

    def __init__(self, client: Any, condition: str) -> None:
        self.condition = condition.lower()
        self.reached = threading.Event()
        self.release = threading.Event()
        self.held = False
        client.meta.events.register_first("before-send.s3.PutObject", self._before_send)

    def _before_send(self, request: Any, **_: Any) -> None:
        headers = {str(k).lower() for k in request.headers}
        if not self.held and self.condition in headers:
            self.held = True
            self.reached.set()
            assert self.release.wait(HOLD_TIMEOUT), "never released"


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.fixture
def two_writers(make_app: MakeApp) -> Iterator[tuple[EnvelopeS3Backend, EnvelopeS3Backend]]:
    """Two workers' backends on one bucket, each with its own client (and probe done)."""
    yield warmed(backend_of(make_app())), warmed(backend_of(make_app()))


@pytest.mark.parametrize("loser", [states.FAILURE, states.RETRY])
@pytest.mark.parametrize("held", ["success", "other"])
def test_a_writer_held_between_its_read_and_its_write_never_overwrites_a_success(
    two_writers: tuple[EnvelopeS3Backend, EnvelopeS3Backend], loser: str, held: str
) -> None:
    """The race Celery's flow loses: a result in progress (STARTED); one writer reads it and
    is held just before its write while the other stores its state in full; then the held
    one goes on. Whichever of SUCCESS and FAILURE/RETRY is held, SUCCESS is what stays."""
    first, second = two_writers
    second.store_result("raced", "progress", states.STARTED)  # first has not written it
    late = ValueError("late duplicate")
    outcome = {"success": (states.SUCCESS, "the result"), "other": (loser, late)}
    held_state, free_state = ("success", "other") if held == "success" else ("other", "success")
    hold = Hold(first.store.client, "If-Match")
    with count_requests(first.store.client) as held_requests:
        thread, errors = in_thread(lambda: first.store_result("raced", *outcome[held_state][::-1]))
        assert hold.reached.wait(HOLD_TIMEOUT)  # it has read STARTED, and is about to write
        second.store_result("raced", *outcome[free_state][::-1])
        hold.release.set()
        thread.join(HOLD_TIMEOUT)
    assert not thread.is_alive() and errors == []
    first._cache.clear()
    meta = first.get_task_meta("raced")
    assert (meta["status"], meta["result"]) == (states.SUCCESS, "the result")
    # The held write was refused (the ETag it was made on had gone: a lost race, checked with
    # one HEAD), and the held writer started again and read what the other had stored.
    assert held_requests.conditional[:6] == [
        "PUT If-None-Match",
        "GET",
        "PUT If-Match",
        "HEAD",
        "PUT If-None-Match",
        "GET",
    ]


@pytest.mark.parametrize("loser", [states.FAILURE, states.RETRY])
def test_two_writers_creating_one_task_id_at_once_leave_the_success(
    two_writers: tuple[EnvelopeS3Backend, EnvelopeS3Backend], loser: str
) -> None:
    """Both writers' create-only writes held until both are about to go out, then sent
    together, twenty times: the server lets one create the key, the other reads and decides."""
    first, second = two_writers
    for round_ in range(20):
        task_id = f"created-{round_}"
        barrier = threading.Barrier(2, timeout=HOLD_TIMEOUT)
        handlers = []
        for backend in (first, second):

            def together(request: Any, _barrier: threading.Barrier = barrier, **_: Any) -> None:
                if "if-none-match" in {str(k).lower() for k in request.headers}:
                    _barrier.wait()

            backend.store.client.meta.events.register("before-send.s3.PutObject", together)
            handlers.append((backend, together))
        try:
            a, a_errors = in_thread(lambda t=task_id: first.store_result(t, "ok", states.SUCCESS))
            late = ValueError("late duplicate")
            b, b_errors = in_thread(lambda t=task_id, e=late: second.store_result(t, e, loser))
            a.join(HOLD_TIMEOUT)
            b.join(HOLD_TIMEOUT)
        finally:
            for backend, handler in handlers:
                backend.store.client.meta.events.unregister("before-send.s3.PutObject", handler)
        assert a_errors == [] and b_errors == []
        first._cache.clear()
        meta = first.get_task_meta(task_id)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, "ok"), round_


@pytest.mark.parametrize("loser", [states.FAILURE, states.RETRY])
def test_two_writers_replacing_a_result_in_progress_at_once_leave_the_success(
    make_app: MakeApp, loser: str
) -> None:
    """A third worker stored STARTED; both writers read it, are held until both are about to
    write over it (If-Match on the same ETag), and go together, ten times: one write wins,
    the other reads again and keeps the SUCCESS, or writes SUCCESS over the FAILURE."""
    starter, first, second = (warmed(backend_of(make_app())) for _ in range(3))
    for round_ in range(10):
        task_id = f"in-progress-{round_}"
        starter.store_result(task_id, None, states.STARTED)
        barrier = threading.Barrier(2, timeout=HOLD_TIMEOUT)
        handlers = []
        for backend in (first, second):
            held: list[int] = []  # this writer's first If-Match only: a later one goes at once

            def together(
                request: Any,
                _barrier: threading.Barrier = barrier,
                _held: list[int] = held,
                **_: Any,
            ) -> None:
                if "if-match" in {str(k).lower() for k in request.headers} and not _held:
                    _held.append(1)
                    _barrier.wait()

            backend.store.client.meta.events.register("before-send.s3.PutObject", together)
            handlers.append((backend, together))
        late = ValueError("late duplicate")
        try:
            a, a_errors = in_thread(lambda t=task_id: first.store_result(t, "ok", states.SUCCESS))
            b, b_errors = in_thread(lambda t=task_id, e=late: second.store_result(t, e, loser))
            a.join(HOLD_TIMEOUT * 2)
            b.join(HOLD_TIMEOUT * 2)
        finally:
            for backend, handler in handlers:
                backend.store.client.meta.events.unregister("before-send.s3.PutObject", handler)
        assert a_errors == [] and b_errors == []
        first._cache.clear()
        meta = first.get_task_meta(task_id)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, "ok"), round_


def ignoring_if_none_match(client: Any) -> Callable[..., None]:
    """Make ``client``'s PutObject go out without If-None-Match: a server that ignores it."""

    def drop(params: dict[str, Any], **_: Any) -> None:
        params.pop("IfNoneMatch", None)

    client.meta.events.register("provide-client-params.s3.PutObject", drop)
    return drop


def test_a_bucket_that_ignores_if_none_match_is_detected_and_celerys_flow_used(
    backend: EnvelopeS3Backend, caplog: pytest.LogCaptureFixture
) -> None:
    ignoring_if_none_match(backend.store.client)
    with caplog.at_level(logging.WARNING, logger=backend_module.__name__):
        backend.store_result("t", "done", states.SUCCESS)
    assert "does not honour If-None-Match" in caplog.text
    with count_requests(backend.store.client) as late:
        backend.store_result("t", "late duplicate", states.FAILURE)
    assert late.conditional == ["GET"]  # read, found SUCCESS: nothing written
    with count_requests(backend.store.client) as new:
        backend.store_result("new", "progress", states.STARTED)
    assert new.conditional == ["GET", "PUT"]
    backend._cache.clear()
    assert backend.get_task_meta("t")["result"] == "done"
    assert backend.get_task_meta("new")["result"] == "progress"


def test_a_probe_the_bucket_refuses_leaves_celerys_flow(
    backend: EnvelopeS3Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """No right to write the probe's key (a policy limited to Celery's keys): store_result still
    works, by Celery's read-then-write flow, and says why once."""

    def deny_probe(request: Any, **_: Any) -> Any:
        if ".envelope-probe-" in request.url:
            return error_response(request, 403, "AccessDenied", "AccessDenied (simulated)")
        return None

    client = backend.store.client
    client.meta.events.register_first("before-send.s3.PutObject", deny_probe)
    with caplog.at_level(logging.WARNING, logger=backend_module.__name__):
        backend.store_result("t", "done", states.SUCCESS)
        with count_requests(client) as second:
            backend.store_result("u", "done too", states.SUCCESS)
    assert "could not probe" in caplog.text and "AccessDenied" in caplog.text
    assert caplog.text.count("could not probe") == 1  # not probed again
    assert second.conditional == ["GET", "PUT"]
    backend._cache.clear()
    assert backend.get_task_meta("t")["result"] == "done"


def test_on_a_versioned_bucket_a_success_stays_on_every_server(
    make_app: MakeApp, s3_endpoint: S3Endpoint
) -> None:
    """moto, SeaweedFS and AWS honour conditional writes on versioned buckets; Ceph RGW 16 does
    not, and the backend then falls back to Celery's flow. Either way a later FAILURE does not
    replace a SUCCESS, and the request counts say which path was taken."""
    with fresh_bucket(s3_endpoint.client(), versioned=True) as name:
        backend = warmed(backend_of(make_app(s3_bucket=name)))
        honoured = backend._conditional_writes_honoured()
        if s3_endpoint.server in ("seaweedfs", "moto"):
            assert honoured
        if s3_endpoint.server == "ceph-rgw":
            assert not honoured
        with count_requests(backend.store.client) as new:
            backend.store_result("t", "done", states.SUCCESS)
        backend.store_result("t", "late duplicate", states.FAILURE)
        backend._cache.clear()
        assert backend.get_task_meta("t")["result"] == "done"
        assert new.conditional == (["PUT If-None-Match"] if honoured else ["GET", "PUT"])
