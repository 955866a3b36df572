"""The ``envelope`` serializer in one process: what a published task message holds, the keys that
open it (rotation, KMS and its call count), which app's keyring is used, and what is refused.

Messages go through kombu's in-memory transport (``memory://``) and are read back raw, as the
worker's consumer receives them; the worker itself is ``test_messages_worker.py``'s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery import _state as celery_state
from kombu import Connection, Message
from kombu.exceptions import DecodeError, EncodeError
from kombu.serialization import dumps, loads

import celery_s3_envelope as cse
from celery_s3_envelope import messages
from celery_s3_envelope.errors import IntegrityError, RetiredKey
from celery_s3_envelope.messages import CONTENT_TYPE, binding, sealer_for
from support.keys import with_active_k2
from support.kms import moto_kms_client
from support.messages import current

SECRET = "pan-4111-1111-1111-1111"


def envelope_app(keyring: Any, **conf: Any) -> Celery:
    app = Celery(f"messages-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.conf.update(
        broker_url=f"memory://{uuid.uuid4().hex[:8]}",
        task_serializer="envelope",
        accept_content=["envelope"],
        envelope_keyring=keyring,
        **conf,
    )
    return app


@pytest.fixture
def app(keyring: cse.Keyring) -> Iterator[Celery]:
    app = envelope_app(keyring)
    with current(app):
        yield app


def published(app: Celery, count: int = 1, **options: Any) -> list[Message]:
    """``count`` messages of task ``t`` sent by ``app``, read back raw from the broker."""
    with Connection(app.conf.broker_url) as connection:
        queue = connection.SimpleQueue("celery", no_ack=True, accept=[CONTENT_TYPE])
        for n in range(count):
            app.send_task("t", args=(SECRET, n), kwargs={"card": SECRET}, **options)
        got = [queue.get(timeout=5) for _ in range(count)]
        queue.close()
    return got


def test_a_published_message_is_sealed_bound_to_its_task_id_and_redacted(app: Celery) -> None:
    (message,) = published(app)
    assert message.content_type == CONTENT_TYPE
    assert message.content_encoding == "binary"
    body = message.body
    assert cse.inspect(body).key == binding(message.headers["id"])
    assert SECRET.encode() not in body
    assert message.headers["argsrepr"] == "<sealed: tuple, 30 B>"
    assert message.headers["kwargsrepr"] == "<sealed: dict, 35 B>"
    assert SECRET not in json.dumps(message.headers)
    args, kwargs, embed = message.decode()
    assert (args, kwargs) == ([SECRET, 0], {"card": SECRET})
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}


def test_the_body_opens_only_for_its_own_task_id(app: Celery) -> None:
    """What the worker's check does (``_expected``): another message's id is refused."""
    first, second = published(app, 2)
    token = messages._expected.set(binding(second.headers["id"]))
    try:
        with pytest.raises(DecodeError) as refused:
            loads(first.body, CONTENT_TYPE, "binary", accept=[CONTENT_TYPE])
        assert isinstance(refused.value.args[0], IntegrityError)
        assert loads(second.body, CONTENT_TYPE, "binary", accept=[CONTENT_TYPE])[0][1] == 1
    finally:
        messages._expected.reset(token)


def test_a_task_published_from_a_publish_signal_leaves_the_outer_message_bound(
    app: Celery,
) -> None:
    """A ``before_task_publish`` receiver of the user's that publishes a task of its own (an
    audit task): both messages are bound to their own ids, both reprs redacted."""
    from celery import signals

    def audit(sender: Any = None, **_: Any) -> None:
        if sender == "t":
            app.send_task("audit", args=(SECRET,))

    signals.before_task_publish.connect(audit, weak=False)
    try:
        with Connection(app.conf.broker_url) as connection:
            queue = connection.SimpleQueue("celery", no_ack=True, accept=[CONTENT_TYPE])
            app.send_task("t", args=(SECRET,))
            got = [queue.get(timeout=5) for _ in range(2)]
            queue.close()
    finally:
        signals.before_task_publish.disconnect(audit)
    assert {m.headers["task"] for m in got} == {"t", "audit"}
    for message in got:
        assert cse.inspect(message.body).key == binding(message.headers["id"])
        assert message.headers["argsrepr"].startswith("<sealed: tuple, ")


def test_task_protocol_1_is_refused_at_publish(keyring: cse.Keyring) -> None:
    """Protocol 1 keeps the task id inside the body, where the seal cannot be bound to it."""
    app = envelope_app(keyring, task_protocol=1)
    with current(app), pytest.raises(EncodeError, match="task protocol 2"):
        app.send_task("t", args=(SECRET,))


def test_a_result_envelope_is_not_a_task_message(app: Celery, keyring: cse.Keyring) -> None:
    """Sealed by the same keyring for an S3 key (someone with read access to the bucket copies
    a result onto the broker): the decoder refuses it, with or without a task id to check."""
    result = cse.seal('[["x"], {}, {}]', key="celery-task-meta-1", keyring=keyring)
    with pytest.raises(DecodeError) as refused:
        loads(result, CONTENT_TYPE, "binary", accept=[CONTENT_TYPE])
    assert "sealed for 'celery-task-meta-1' is not accepted here" in str(refused.value)


def test_messages_in_flight_open_after_rotation(keyring: cse.Keyring) -> None:
    """Sealed under k1; the worker's keyring has k2 active and k1 in decrypt state: it opens.
    With k1 retired, it does not."""
    with current(envelope_app(keyring)) as before:
        (message,) = published(before)
    rotated = with_active_k2(keyring)
    assert cse.inspect(message.body).kek_id == "k1" and rotated.active.id == "k2"
    with current(envelope_app(rotated)):
        assert message.decode()[0] == [SECRET, 0]
        assert cse.inspect(dumps([[1], {}, {}], "envelope")[2]).kek_id == "k2"
    message._decoded_cache = None
    with current(envelope_app(rotated.with_state("k1", cse.KeyState.RETIRED))):
        with pytest.raises(DecodeError) as refused:
            message.decode()
        assert isinstance(refused.value.args[0], RetiredKey)


def test_without_celery_publishing_it_the_seal_names_the_content_type_only(app: Celery) -> None:
    """kombu used directly (no task id to bind): still sealed, and bound to the content type."""
    content_type, _, body = dumps({"card": SECRET}, "envelope")
    assert content_type == CONTENT_TYPE and SECRET.encode() not in body
    assert cse.inspect(body).key == CONTENT_TYPE
    assert loads(body, CONTENT_TYPE, "binary") == {"card": SECRET}


# -- which app's keyring ------------------------------------------------------------------------


def test_the_current_app_is_used_else_the_one_app_using_the_serializer(
    keyring: cse.Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's registry of live apps holds only the apps made in this test (other tests' apps
    may wait for the garbage collector)."""
    monkeypatch.setattr(celery_state, "_apps", weakref.WeakSet())
    sealing = envelope_app(keyring)
    other = Celery("not-sealing", set_as_current=False)
    with current(other):
        assert messages.message_app() is sealing  # the only live app that seals
        second = envelope_app(cse.Keyring.generate("k9"))
        with pytest.raises(EncodeError, match="2 Celery apps"):
            dumps([[], {}, {}], "envelope")
        with current(second):
            assert cse.inspect(dumps([[], {}, {}], "envelope")[2]).kek_id == "k9"
        del second, sealing


def test_one_keyring_per_app_and_per_process(keyring: cse.Keyring) -> None:
    first, second = envelope_app(keyring), envelope_app(keyring)
    assert sealer_for(first) is sealer_for(first)
    assert sealer_for(first) is not sealer_for(second)
    parent = sealer_for(first)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:  # a forked pool child, like prefork's
        child_pid, child_sealer_pid = pool.apply(_sealer_pid, (first,))
    assert child_pid != os.getpid() and child_sealer_pid == child_pid
    assert parent.pid == os.getpid() and sealer_for(first) is parent


def _sealer_pid(app: Celery) -> tuple[int, int]:
    return os.getpid(), sealer_for(app).pid


# -- KMS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "cache", "expected"),
    [(1000, {}, 1), (20, {"envelope_kms_cache_seconds": 0}, 20)],  # cache off: a call each
)
def test_a_thousand_messages_cost_one_kms_call_each_way(
    kms_endpoint: str, count: int, cache: dict[str, Any], expected: int
) -> None:
    arn = moto_kms_client(kms_endpoint).create_key()["KeyMetadata"]["Arn"]
    kms_keyring = {
        "version": 1,
        "keys": [
            {"id": "kms-1", "kms_key_id": arn, "state": "active", "created": "2026-11-25T00:00:00Z"}
        ],
    }
    app = envelope_app(
        kms_keyring,
        envelope_kms_endpoint_url=kms_endpoint,
        envelope_kms_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        **cache,
    )
    calls: list[str] = []
    with current(app):
        sealer_for(app).keyring.active.provider.client.meta.events.register(  # type: ignore[attr-defined]
            "before-send.kms.*",
            lambda request, **_: calls.append(
                request.headers["X-Amz-Target"].decode().split(".")[-1]
            ),
        )
        got = published(app, count)
        assert [m.decode()[0][1] for m in got] == list(range(count))
    assert calls.count("GenerateDataKey") == expected
    assert calls.count("Decrypt") == expected
    assert messages.KMS_SCOPE.encode() in cse.inspect(got[0].body).wrap_body


# -- the backend's results under accept_content = ["envelope"] ----------------------------------


@pytest.mark.s3
def test_results_stay_readable_when_only_sealed_messages_are_accepted(make_app: Any) -> None:
    backend = make_app(accept_content=["envelope"], task_serializer="envelope").backend
    assert backend.accept == {CONTENT_TYPE, "application/json"}
    backend.store_result("r1", {"card": SECRET}, "SUCCESS")
    assert backend.get_result("r1") == {"card": SECRET}
    told = make_app(accept_content=["envelope"], result_accept_content=["envelope"]).backend
    assert told.accept == {CONTENT_TYPE}  # result_accept_content, when given, is obeyed


@pytest.mark.s3
def test_task_sent_events_carry_markers_not_arguments(make_app: Any) -> None:
    """``task_send_sent_event``: Celery builds the ``task-sent`` event's args and kwargs from the
    arguments before the serializer sees the message; the publisher's event dispatcher (made
    redacting when the backend starts) replaces them as ``argsrepr`` is."""
    from kombu import Exchange, Queue

    app = make_app(
        broker_url=f"memory://{uuid.uuid4().hex[:8]}",
        task_serializer="envelope",
        accept_content=["envelope"],
        task_send_sent_event=True,
    )
    events = Queue(
        "sent-events", Exchange("celeryev", type="topic"), routing_key="task.#", auto_delete=True
    )
    with current(app), Connection(app.conf.broker_url) as connection:
        queue = connection.SimpleQueue(events, no_ack=True)
        tasks = connection.SimpleQueue("celery", no_ack=True, accept=[CONTENT_TYPE])
        app.send_task("t", args=(SECRET,), kwargs={"card": SECRET})
        event = queue.get(timeout=5).decode()
        assert SECRET.encode() not in tasks.get(timeout=5).body  # (and the queue is left empty)
        queue.close()
        tasks.close()
    assert event["type"] == "task-sent"
    assert (event["args"], event["kwargs"]) == ("<sealed: tuple, 28 B>", "<sealed: dict, 35 B>")
    assert SECRET not in json.dumps(event)


# -- decode, offline ------------------------------------------------------------------------------


def test_decode_opens_a_sealed_body_and_a_broker_message_file(
    app: Celery, keyring_file: Any, tmp_path: Any
) -> None:
    from celery_s3_envelope.cli import envelope
    from support.cli import invoke

    (message,) = published(app)
    raw = tmp_path / "body.bin"
    raw.write_bytes(message.body)
    task_id = message.headers["id"]
    dump = tmp_path / "1733_x.celery.msg"  # kombu's filesystem transport, as a DLQ dump keeps it
    dump.write_text(
        json.dumps(
            {
                "body": __import__("base64").b64encode(message.body).decode(),
                "content-type": CONTENT_TYPE,
                "content-encoding": "binary",
                "headers": message.headers,
                "properties": {"body_encoding": "base64", "delivery_tag": "x"},
            }
        )
    )
    for path in (raw, dump):
        result = invoke(envelope, "decode", "--meta", path, "--keyring", keyring_file)
        assert result.exit_code == 0, result.output
        args, kwargs, _ = json.loads(result.stdout)
        assert (args, kwargs) == ([SECRET, 0], {"card": SECRET})
        assert f"sealed for  {CONTENT_TYPE}; task={task_id}" in result.stderr


def tenant_of(request: Any) -> str | None:
    tenant = request.kwargs.get("tenant")
    return None if tenant is None else str(tenant)


def test_the_tenant_selector_picks_each_messages_kek(keyring: cse.Keyring, tmp_path: Any) -> None:
    """``envelope_tenant_selector`` chooses a message's KEK as it does a result's (docs/tenants.md):
    each tenant's messages open under its own KEK only, and a message with no tenant stays under
    the keyring's active KEK. Shredding the tenant makes its messages in flight unreadable."""
    from celery_s3_envelope.errors import ShreddedKey
    from celery_s3_envelope.tenants import tenant_kek_id

    app = envelope_app(
        keyring,
        envelope_tenant_selector=tenant_of,
        envelope_tenant_keystore=str(tmp_path / "tenant-keys"),
    )
    with current(app), Connection(app.conf.broker_url) as connection:
        queue = connection.SimpleQueue("celery", no_ack=True, accept=[CONTENT_TYPE])
        for tenant in ("acme", "globex", None):
            kwargs = {"card": SECRET} if tenant is None else {"card": SECRET, "tenant": tenant}
            app.send_task("t", args=(SECRET,), kwargs=kwargs)
        acme, globex, nobody = (queue.get(timeout=5) for _ in range(3))
        queue.close()
        assert cse.inspect(acme.body).kek_id == tenant_kek_id("acme", 1)
        assert cse.inspect(globex.body).kek_id == tenant_kek_id("globex", 1)
        assert cse.inspect(nobody.body).kek_id == keyring.active.id
        for message in (acme, globex, nobody):
            assert SECRET.encode() not in message.body
            assert message.decode()[1]["card"] == SECRET
        with pytest.raises(cse.UnknownKey):  # the keyring alone does not open a tenant's message
            cse.unseal(acme.body, keyring=keyring)
        sealer = sealer_for(app)
        assert sealer.tenants is not None
        sealer.tenants.shred("acme")
        with pytest.raises(DecodeError) as refused:
            loads(acme.body, CONTENT_TYPE, "binary", accept=[CONTENT_TYPE])
        assert isinstance(refused.value.args[0], ShreddedKey)
        assert globex.decode()[1]["tenant"] == "globex"
