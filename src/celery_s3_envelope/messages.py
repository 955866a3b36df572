"""The ``envelope`` kombu serializer: task message bodies sealed with the app's keyring.

kombu loads this module through the ``kombu.serializers`` entry point (``SERIALIZER``) when
``kombu.serialization`` is imported, in every process that uses kombu; so a user's whole set-up is
``task_serializer = "envelope"`` and ``accept_content = ["envelope"]``. Being imported that early
(in the middle of Celery's own first import of kombu), this module imports nothing of Celery or
kombu at module level, not even ``celery.signals`` (that import would be circular): its signal
receivers are connected when ``celery.signals`` is first imported (``_SignalsHook``), or at once
when it already is.

A body is JSON (kombu's, as Celery's ``json`` serializer writes it), then zstd, then the envelope
of ``docs/format.md`` (payload kind text), under the keyring of the app that publishes it. The
envelope's object-key field carries the *binding*: ``application/x-celery-s3-envelope; task=<id>``.

* Publishing: ``before_task_publish`` hands the message's headers to the encoder (same thread,
  same body object), which binds the seal to the task id and replaces the ``argsrepr`` and
  ``kwargsrepr`` headers by markers (``<sealed: tuple, 24 B>``) before kombu builds the message.
* Consuming: ``decode`` opens a body sealed as a task message (bound to the task id the
  worker's check expects, when that check is the caller). The check itself, which refuses
  unsealed and foreign bodies before the pool sees them, is ``message_check``'s.

``sealer_for`` is the one place that says which keyring seals and opens a message.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from .keyring import Keyring
from .pipeline import Pipeline, inspect
from .tenants import Selector, TenantKeys, TenantKeyStore, keys_for_request

__all__ = [
    "CONTENT_TYPE",
    "KMS_SCOPE",
    "NAME",
    "SERIALIZER",
    "binding",
    "decode",
    "encode",
    "open_message",
    "sealer_for",
    "uses_envelope",
]

NAME = "envelope"
CONTENT_TYPE = "application/x-celery-s3-envelope"
CONTENT_ENCODING = "binary"
TASK_BINDING = CONTENT_TYPE + "; task="
KMS_SCOPE = "celery-task-messages"
"""The KMS encryption context's ``scope`` for message envelopes (results use ``bucket/prefix``)."""


def binding(task_id: str | None) -> str:
    """What a message envelope's object-key field holds: the content type, and the task id when
    the encoder saw it (every message Celery publishes)."""
    return CONTENT_TYPE if task_id is None else TASK_BINDING + task_id


def is_message_binding(key: str) -> bool:
    return key == CONTENT_TYPE or key.startswith(TASK_BINDING)


# -- which app, which keyring ---------------------------------------------------------------------
def uses_envelope(conf: Mapping[str, Any]) -> bool:
    """The app seals its task messages or accepts sealed ones."""
    accept = conf.get("accept_content") or ()
    return conf.get("task_serializer") == NAME or NAME in accept or CONTENT_TYPE in accept


def only_envelope(conf: Mapping[str, Any]) -> bool:
    """``accept_content`` admits sealed messages and nothing else."""
    accept = set(conf.get("accept_content") or ())
    return bool(accept) and accept <= {NAME, CONTENT_TYPE}


_sealing_apps: weakref.WeakSet[Any] = weakref.WeakSet()
"""Apps seen to use the serializer (so ``message_app`` reads their configuration once)."""


def message_app() -> Any:
    """The app whose keyring seals or opens the message at hand: the current app when it uses
    the serializer (a worker's, or one made current), else the one live app that does."""
    from celery import _state  # type: ignore[import-untyped]

    app = _state.get_current_app()
    if app in _sealing_apps:  # the usual case, and the fast path: one look-up
        return app
    if uses_envelope(app.conf):
        _sealing_apps.add(app)
        return app
    found = [other for other in list(_state._get_active_apps()) if uses_envelope(other.conf)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise LookupError(
            "no Celery app in this process uses the envelope serializer "
            "(task_serializer = 'envelope' or 'envelope' in accept_content)"
        )
    raise LookupError(
        f"{len(found)} Celery apps in this process use the envelope serializer and none is "
        "current: call app.set_current() on the one that sends or receives messages"
    )


class MessageSealer:
    """The keyring, tenant key store and pipeline of one app in one process."""

    def __init__(
        self,
        keyring: Keyring,
        pipeline: Pipeline,
        tenants: TenantKeyStore | None = None,
        selector: Selector | None = None,
    ) -> None:
        self.keyring = keyring
        self.pipeline = pipeline
        self.tenants = tenants
        self.selector = selector
        self.readers = TenantKeys(tenants, keyring, None)
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"<MessageSealer {self.keyring!r}>"

    def seal(self, text: str, key: str, request: Any = None) -> bytes:
        """Sealed under the KEK of the tenant ``envelope_tenant_selector`` picks for ``request``
        (the message's task name, headers and kwargs), else the keyring's active KEK."""
        keys = keys_for_request(
            request, keyring=self.keyring, store=self.tenants, selector=self.selector
        )
        return self.pipeline.seal(text, key=key, keyring=keys)

    def unseal(self, data: bytes, expected: str | None) -> str | bytes:
        """Open a message envelope; with ``expected``, only one bound to exactly that, else one
        bound to any task message (never a result's S3 key)."""
        if expected is None:
            return self.pipeline.unseal(data, keyring=self.readers, accept_key=is_message_binding)
        return self.pipeline.unseal(data, keyring=self.readers, key=expected)


def sealer_from_conf(conf: Mapping[str, Any]) -> MessageSealer:
    """The backend's settings (``envelope_keyring``, ``envelope_kms_*``, compression, size) read
    by the backend's own factories; KMS KEKs get the scope ``KMS_SCOPE``."""
    from .settings import (
        kms_provider_from_settings,
        load_keyring,
        pipeline_from_settings,
        refuse_example_keys,
        resolve_settings,
        store_from_settings,
        tenant_selector_from_settings,
        tenant_store_from_settings,
    )

    settings = resolve_settings(conf)
    keyring = refuse_example_keys(load_keyring(settings["envelope_keyring"]), settings)
    if keyring.uses_kms:
        keyring = keyring.with_kms(kms_provider_from_settings(settings, KMS_SCOPE))
    selector = tenant_selector_from_settings(settings)
    tenants = None
    if selector is not None or settings.get("envelope_tenant_keystore"):
        # the results' key store (docs/tenants.md): a tenant's messages and results share its KEK
        tenants = tenant_store_from_settings(
            settings, keyring, store_from_settings(settings), str(settings["s3_base_path"] or "")
        )
    return MessageSealer(keyring, pipeline_from_settings(settings), tenants, selector)


_sealers: weakref.WeakKeyDictionary[Any, MessageSealer] = weakref.WeakKeyDictionary()
_sealers_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    """A child forked while another thread held the lock would wait on it for ever."""
    global _sealers_lock
    _sealers_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def sealer_for(app: Any, headers: Mapping[str, Any] | None = None) -> MessageSealer:
    """Which keyring seals (and opens) a message of ``app``: one per app and per process (a
    forked pool child builds its own). ``headers`` are unused: the tenant is chosen per
    message, in ``MessageSealer.seal``."""
    del headers
    sealer = _sealers.get(app)
    if sealer is not None and sealer.pid == os.getpid():
        return sealer
    with _sealers_lock:
        sealer = _sealers.get(app)
        if sealer is None or sealer.pid != os.getpid():
            sealer = _sealers[app] = sealer_from_conf(app.conf)
        return sealer


def forget(app: Any) -> None:
    """Drop ``app``'s cached keyring (tests, and a keyring file replaced on disk)."""
    with _sealers_lock:
        _sealers.pop(app, None)
        _sealing_apps.discard(app)


# -- the publishing side ------------------------------------------------------------------------
_publishing = threading.local()
"""The bodies and headers of the task messages Celery is publishing on this thread."""


def _before_publish(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    # Keyed by the body: a receiver of the same signal may publish a task of its own (nested),
    # and each encode must find its own message's headers.
    if isinstance(headers, dict):
        _in_flight()[id(body)] = (body, headers)


def _after_publish(body: Any = None, **_: Any) -> None:
    _in_flight().pop(id(body), None)


def _in_flight() -> dict[int, tuple[Any, dict[str, Any]]]:
    found: dict[int, tuple[Any, dict[str, Any]]] | None = getattr(_publishing, "messages", None)
    if found is None:
        found = _publishing.messages = {}
    return found


def _connect(signals: Any) -> None:
    signals.before_task_publish.connect(_before_publish, weak=False, dispatch_uid=__name__ + ".b")
    signals.after_task_publish.connect(_after_publish, weak=False, dispatch_uid=__name__ + ".a")


def _complete(signals: Any) -> bool:
    """``celery.signals`` has finished importing (``after_task_publish`` is defined after
    ``before_task_publish``)."""
    return hasattr(signals, "after_task_publish")


class _ConnectingLoader(importlib.abc.Loader):
    """``celery.signals``' own loader, then ``_connect``."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _connect(module)


class _SignalsHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; connects the receivers once ``celery.signals`` is complete, then
    leaves. Either it wraps that module's loader when it is imported, or, when kombu loaded this
    module in the middle of importing ``celery.signals`` (kombu 5.3: ``celery.signals`` imports
    ``celery.utils``, which imports ``kombu.entity``, then ``kombu.serialization``, then this entry
    point), it connects at the first import after that module has finished."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        signals = sys.modules.get("celery.signals")
        if signals is not None:
            if _complete(signals):
                self.leave()
                _connect(signals)
            return None
        if fullname != "celery.signals":
            return None
        self.leave()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ConnectingLoader(spec.loader)
        return spec

    def leave(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _ensure_connected() -> None:
    """Connect now if the hook is still waiting and ``celery.signals`` is complete (no import
    happened in between): before the first publish, and at a worker's start."""
    signals = sys.modules.get("celery.signals")
    if _hook in sys.meta_path and signals is not None and _complete(signals):
        _hook.leave()
        _connect(signals)


_hook = _SignalsHook()
if "celery.signals" in sys.modules and _complete(sys.modules["celery.signals"]):
    _connect(sys.modules["celery.signals"])
else:
    sys.meta_path.insert(0, _hook)


def _redact_reprs(headers: dict[str, Any]) -> None:
    from .redact_text import is_result_marker, result_marker

    for name in ("argsrepr", "kwargsrepr"):
        value = headers.get(name)
        if isinstance(value, str) and not is_result_marker(value):
            headers[name] = result_marker(value)


def encode(body: Any) -> bytes:
    """kombu's encoder: JSON, then sealed; a Celery task message is bound to its task id and
    its ``argsrepr`` / ``kwargsrepr`` headers become markers."""
    from kombu.utils.json import dumps

    _ensure_connected()
    current = _in_flight().get(id(body))
    headers: dict[str, Any] | None = None
    if current is not None and current[0] is body:
        headers = current[1]
    if isinstance(body, dict) and {"task", "id", "args"} <= body.keys():
        from kombu.exceptions import EncodeError

        raise EncodeError(
            "the envelope serializer needs Celery's task protocol 2 (task_protocol = 2, the "
            "default): a protocol 1 message carries its task id inside the sealed body"
        )
    task_id = headers.get("id") if headers is not None else None
    if headers is not None:
        _redact_reprs(headers)
    sealer = sealer_for(message_app(), headers)
    text: str = dumps(body)  # type: ignore[no-untyped-call]
    key = binding(task_id if isinstance(task_id, str) else None)
    return sealer.seal(text, key, _request_of(body, headers))


def _request_of(body: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the tenant selector sees of a task message (protocol 2: the body is ``(args,
    kwargs, embed)``): its task name and id, headers and kwargs, as a result's request shows them.
    None for anything that is not a task message Celery is publishing."""
    if headers is None:
        return None
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) == 3 else None
    return {
        "task": headers.get("task"),
        "id": headers.get("id"),
        "headers": headers,
        "kwargs": kwargs if isinstance(kwargs, dict) else {},
    }


_expected: ContextVar[str | None] = ContextVar("celery_s3_envelope_expected", default=None)
"""The binding the message being checked must carry (set by the worker's check)."""


def decode(data: bytes | bytearray | memoryview | str) -> Any:
    """kombu's decoder: opens a message envelope sealed as a task message (bound to the task id
    the worker's check expects, when it is the caller)."""
    from kombu.utils.json import loads

    if isinstance(data, str):  # a transport that handed the body on as text
        data = data.encode("latin-1")
    sealer = sealer_for(message_app())
    return loads(sealer.unseal(bytes(data), _expected.get()))  # type: ignore[no-untyped-call]


def open_message(data: bytes, keyring: Keyring, *, max_size: int | None = None) -> tuple[str, Any]:
    """Offline: (binding, body) of a sealed message body, with ``keyring`` alone."""
    import json

    pipeline = Pipeline() if max_size is None else Pipeline(max_size=max_size)
    text = pipeline.unseal(data, keyring=keyring, accept_key=is_message_binding)
    return inspect(data).key, json.loads(text)


def sealed_body(data: bytes) -> bytes:
    """The sealed body inside a task message as a broker or a dead-letter dump keeps it: kombu's
    JSON form of a message (``{"body": <base64>, "content-type": "application/x-celery-s3-envelope",
    "properties": {"body_encoding": "base64", ...}, ...}``, as kombu's filesystem, Redis and SQS
    transports store it); anything else (a raw sealed body included) as it is."""
    import base64
    import binascii
    import json

    if data[:1] != b"{":
        return data
    try:
        message = json.loads(data)
    except ValueError:
        return data
    if not isinstance(message, dict) or message.get("content-type") != CONTENT_TYPE:
        return data
    properties = message.get("properties")
    body = message.get("body")
    if not isinstance(properties, dict) or properties.get("body_encoding") != "base64":
        return data
    if not isinstance(body, str):
        return data
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return data


SERIALIZER = (encode, decode, CONTENT_TYPE, CONTENT_ENCODING)
"""What the ``kombu.serializers`` entry point ``envelope`` names: kombu calls
``register("envelope", *SERIALIZER)``."""
