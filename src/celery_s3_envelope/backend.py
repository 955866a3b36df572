"""``EnvelopeS3Backend``: Celery's S3 result backend with every stored value a sealed envelope.

A drop-in for ``celery.backends.s3.S3Backend``: same ``s3_*`` settings, same ``get`` / ``set`` /
``delete`` contract, plus ``mget`` (native joins), ``incr`` (chords without polling, by S3
conditional writes) and ``cleanup`` (``result_expires`` and ``result_failure_expires``). This module
maps Celery's calls onto the pipeline and the store; it holds no crypto and calls no boto3 itself.
``docs/backend.md`` is the settings reference and records the decisions taken here.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from botocore.exceptions import BotoCoreError, ClientError
from celery import states  # type: ignore[import-untyped]
from celery.app.backends import by_url  # type: ignore[import-untyped]
from celery.backends import base as celery_base  # type: ignore[import-untyped]
from celery.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from celery.utils.log import get_logger  # type: ignore[import-untyped]
from kombu.exceptions import KombuError

from .envelope import is_envelope
from .errors import EnvelopeError, NotAnEnvelope, UnknownKey, error_code
from .keyring import Keyring
from .kms import KmsError
from .lifecycle import EXPIRY_TAG  # written when result_failure_expires is set
from .messages import CONTENT_TYPE as MESSAGE_CONTENT_TYPE
from .pipeline import Pipeline
from .redact import install as install_redaction
from .settings import (
    EXPIRY_MODES,
    SCHEME,
    SETTINGS,
    endpoint_url,
    kms_provider_from_settings,
    load_keyring,
    masked_url,
    optional_str,
    pipeline_from_settings,
    refuse_example_keys,
    resolve_settings,
    setting_bool,
    store_from_settings,
    tenant_selector_from_settings,
    tenant_store_from_settings,
)
from .store import NOT_HONOURED, S3Store, is_missing_key, is_transient, is_write_conflict
from .tenants import TenantKeys, TenantKeyStore, keys_for_request

__all__ = ["EnvelopeS3Backend"]

logger = get_logger(__name__)

# Features of newer Celery releases, detected rather than assumed (docs/backend.md, "Celery
# versions"): the backend runs on every Celery from 5.3 on.
COMPRESSED_PAYLOAD_MAGIC: bytes | None = getattr(celery_base, "COMPRESSED_PAYLOAD_MAGIC", None)
"""Celery 5.7's in-band marker of a ``result_compression`` payload (already compressed);
``None`` under a Celery without ``result_compression``, which never writes one."""
CELERY_HAS_CHORD_EXPIRES = isinstance(
    getattr(celery_base.BaseKeyValueStoreBackend, "chord_expires", None), property
)
"""Celery 5.7's ``result_chord_expires`` (the ``chord_expires`` property); before it, chord
counters expire with ``result_expires``, as Celery's own key/value backends did."""

INCR_MAX_ATTEMPTS = 64
INCR_MEMORY = 256
"""Increments a chord counter remembers (by token), to recognise its own lost writes."""
INCR_BACKOFF_START = 0.01
INCR_BACKOFF_MAX = 0.5
CLEANUP_READ_BATCH = 256
STORE_MAX_ATTEMPTS = 64
"""Conditional writes of one store_result before it gives up (each lost race costs a read)."""

STORE_MEMORY = 1024
"""Results in progress whose ETag a backend remembers (``_wrote``)."""

_CONDITIONAL: dict[tuple[str | None, str, str], bool] = {}
"""Per process: whether a bucket (endpoint, bucket, base path) honours If-None-Match."""
_CONDITIONAL_LOCK = threading.Lock()

_plaintext_warned_pid: int | None = None
_plaintext_lock = threading.Lock()


def _cutoff(now: datetime, expires: float | None) -> datetime | None:
    """Objects last modified at or before this moment have expired (``None``: never)."""
    return now - timedelta(seconds=expires) if expires else None


def _celery_compressed(value: str | bytes) -> bool:
    """Whether ``value`` is a payload Celery's ``result_compression`` compressed."""
    return (
        COMPRESSED_PAYLOAD_MAGIC is not None
        and isinstance(value, bytes)
        and value.startswith(COMPRESSED_PAYLOAD_MAGIC)
    )


def _warn_plaintext_once(key: str) -> None:
    global _plaintext_warned_pid
    pid = os.getpid()
    with _plaintext_lock:
        if _plaintext_warned_pid == pid:
            return
        _plaintext_warned_pid = pid
    logger.warning(
        "read a plaintext (non-envelope) result at %r because envelope_allow_plaintext is on; "
        "this process will not warn again. Turn it off once the migration is done.",
        key,
    )


class _ChordStateClient:
    """``EnvelopeS3Backend.client``: the one call Celery 5.3 makes on it, ``delete(key)``."""

    def __init__(self, backend: EnvelopeS3Backend) -> None:
        self._backend = backend

    def delete(self, key: str | bytes) -> None:
        self._backend.delete(key)


# -- the backend -------------------------------------------------------------------------------
class EnvelopeS3Backend(celery_base.KeyValueStoreBackend):  # type: ignore[misc]
    """An S3 result store whose objects are sealed (compressed, encrypted, authenticated)."""

    supports_native_join = True
    supports_result_compression = True
    supports_failure_expires = True
    implements_incr = True

    store: S3Store
    keyring: Keyring
    tenant_keys: TenantKeyStore
    pipeline: Pipeline
    bucket_name: str
    base_path: str

    def __init__(
        self, url: str | None = None, options: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """``options`` (setting names) override ``app.conf``; URL values override both."""
        super().__init__(url=url, **kwargs)
        self._accept_result_serializer(kwargs.get("accept"))
        self._options = dict(options or {})
        unknown = set(self._options) - set(SETTINGS)
        if unknown:
            raise ImproperlyConfigured(f"unknown backend options: {', '.join(sorted(unknown))}")
        self._base_kwargs = {k: v for k, v in kwargs.items() if k != "app"}
        conf = self.app.conf
        settings = resolve_settings(conf, self._options, url)

        self.bucket_name = str(settings["s3_bucket"] or "")
        if not self.bucket_name:
            raise ImproperlyConfigured("Missing bucket name")
        self.base_path = str(settings["s3_base_path"] or "")
        self.endpoint_url = optional_str(settings, "s3_endpoint_url")
        self.aws_region = optional_str(settings, "s3_region")
        self.allow_plaintext = setting_bool(settings, "envelope_allow_plaintext")
        self.keyring = refuse_example_keys(load_keyring(settings["envelope_keyring"]), settings)
        endpoint_url(settings, "envelope_kms_endpoint_url")  # refused now, even if unused yet
        if self.keyring.uses_kms:
            scope = f"{self.bucket_name}/{self.base_path}"
            self.keyring = self.keyring.with_kms(kms_provider_from_settings(settings, scope))
        self.pipeline = pipeline_from_settings(settings)
        self.store = store_from_settings(settings)
        if not self.store.has_credentials():
            raise ImproperlyConfigured("Missing aws s3 creds")
        # Tenant KEKs (docs/tenants.md): read lazily, so every backend opens tenants' results.
        self.tenant_keys = tenant_store_from_settings(
            settings, self.keyring, self.store, self.base_path
        )
        self.tenant_selector = tenant_selector_from_settings(settings)
        self._readers = TenantKeys(self.tenant_keys, self.keyring, None)

        failure_expires = conf.get("result_failure_expires")
        self.failure_expires: float | None = (
            self.expires if failure_expires is None else self.prepare_expires(failure_expires)
        )
        # Tags cost an s3:PutObjectTagging permission and reveal failed-or-not: only on demand.
        self.tag_expiry_class = failure_expires is not None
        expiry = str(settings.get("envelope_expiry") or "cleanup")
        if expiry not in EXPIRY_MODES:
            raise ImproperlyConfigured(f"envelope_expiry must be one of {', '.join(EXPIRY_MODES)}")
        # "lifecycle": a bucket rule expires results (`lifecycle apply`); Celery's beat then does
        # not schedule its daily celery.backend_cleanup task for this backend.
        self.supports_autoexpire = expiry == "lifecycle"
        self._written: OrderedDict[str, str] = OrderedDict()  # object key -> ETag we wrote
        install_redaction(self.app)  # envelope_redact: values out of the worker's logs/events

    def _accept_result_serializer(self, accept: Any) -> None:
        """With sealed task messages (``accept_content = ["envelope"]``) and no
        ``result_accept_content``, results (``result_serializer``, JSON by default) are still
        read: Celery would take ``accept_content`` for results too and refuse every one. Results
        are sealed here, by this backend, so their serializer's content type is accepted."""
        conf = self.app.conf
        if accept is not None or conf.get("result_accept_content") is not None:
            return
        accepted: set[str] = set(getattr(self, "accept", None) or ())
        if accepted and accepted <= {MESSAGE_CONTENT_TYPE}:
            self.accept = accepted | {self.content_type}

    @classmethod
    def configured_for(cls, app: Any) -> bool:
        """True when ``app``'s result backend (``backend=`` or ``result_backend``) is this class;
        a setting that does not resolve is False here, and reported when the backend is built."""
        name = app.backend_cls or app.conf.result_backend
        if not name:
            return False
        try:
            found, _url = by_url(name, app.loader)
        except (ImportError, ValueError, ImproperlyConfigured):
            return False
        return isinstance(found, type) and issubclass(found, cls)

    # -- identity ----------------------------------------------------------------------------
    def as_uri(self, include_password: bool = False) -> str:
        """The backend's URL with the secret access key masked (``include_password``: as given).
        A URL never holds key material: its ``keyring`` parameter takes a path only."""
        if not self.url or not urlsplit(self.url).netloc:  # "s3envelope://": all from settings
            return f"{SCHEME}://{self.bucket_name}/{self.base_path}"
        if include_password:
            return str(self.url)
        parts = urlsplit(masked_url(self.url))
        query = [
            (name, masked_url(value))
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        return urlunsplit(parts._replace(query=urlencode(query, safe=":/")))

    def __reduce__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        """Pickle with the URL and the options, so a worker rebuilds the same backend."""
        kwargs = {**(kwargs or {}), **self._base_kwargs, "url": self.url, "options": self._options}
        return super().__reduce__(args, kwargs)

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """For ``result_backend_always_retry``: connection errors, timeouts, 5xx, throttling."""
        return is_transient(exc)

    # -- key/value ---------------------------------------------------------------------------
    def _object_key(self, key: str | bytes) -> str:
        """The full S3 object key: ``s3_base_path`` prepended as is, like the stock backend."""
        text = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        return self.base_path + text if self.base_path else text

    def _seal(self, object_key: str, value: str | bytes, request: Any = None) -> bytes:
        """Sealed under the tenant's KEK that ``envelope_tenant_selector`` picks from the task's
        ``request``; without a request (groups, chord counters, ``set``) or a tenant, under the
        keyring's active KEK."""
        data = value if isinstance(value, str) else bytes(value)
        # Celery's result_compression payloads are compressed already: zstd would only cost.
        compress = not _celery_compressed(data)
        keys = keys_for_request(
            request, keyring=self.keyring, store=self.tenant_keys, selector=self.tenant_selector
        )
        return self.pipeline.seal(data, key=object_key, keyring=keys, compress=compress)

    def _open(self, object_key: str, data: bytes) -> str | bytes:
        """The sealed value; a legacy plaintext object only in migration mode. A result under a
        KEK this process lacks is logged with that id and the keyring's (never key material):
        Celery's own log shows only the exception's type (``envelope_redact``)."""
        if is_envelope(data):
            try:
                return self.pipeline.unseal(data, keyring=self._readers, key=object_key)
            except UnknownKey as exc:
                logger.error(
                    "result %r is sealed under KEK %r, which this process cannot use: %s",
                    object_key,
                    exc.kek_id,
                    exc,
                )
                raise
        if not self.allow_plaintext:
            raise NotAnEnvelope(
                f"object {object_key!r} is not an envelope (a plaintext result, e.g. written by "
                "Celery's S3Backend); set envelope_allow_plaintext = True to read such results "
                "while migrating"
            )
        _warn_plaintext_once(object_key)
        return data

    def _as_returned(self, value: str | bytes) -> str | bytes:
        """What the stock backend returns: bytes for binary serializers, else text."""
        if isinstance(value, str):
            if self.content_encoding == "binary":
                return value.encode("utf-8", "surrogatepass")
            return value
        if self.content_encoding == "binary" or _celery_compressed(value):
            return value
        return value.decode("utf-8")

    def _value(self, object_key: str, data: bytes | None) -> str | bytes | None:
        return None if data is None else self._as_returned(self._open(object_key, data))

    def _tags(self, state: str | None) -> dict[str, str] | None:
        if not self.tag_expiry_class:
            return None
        return {EXPIRY_TAG: "failure" if state == states.FAILURE else "default"}

    def _put(self, key: str | bytes, value: str | bytes, state: str | None) -> None:
        object_key = self._object_key(key)
        self.store.put(object_key, self._seal(object_key, value), tags=self._tags(state))

    def get(self, key: str | bytes) -> str | bytes | None:
        """The stored value (one GetObject), ``None`` when absent."""
        object_key = self._object_key(key)
        return self._value(object_key, self.store.get(object_key))

    def mget(self, keys: Iterable[str | bytes]) -> list[str | bytes | None]:
        """``get`` for many keys, concurrently; the list follows ``keys``' order."""
        object_keys = [self._object_key(key) for key in keys]
        found = self.store.get_many(object_keys)
        return [self._value(key, found[key]) for key in object_keys]

    def set(self, key: str | bytes, value: str | bytes) -> None:
        """Seal ``value`` for its object key and write it (one PutObject)."""
        self._put(key, value, None)

    def _set_with_state(self, key: str | bytes, value: str | bytes, state: str) -> None:
        self._put(key, value, state)

    def delete(self, key: str | bytes) -> None:
        """Delete the object (one DeleteObject)."""
        self.store.delete(self._object_key(key))

    # -- store_result: one conditional write in the common case ------------------------------
    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's semantics (a SUCCESS is never overwritten), by conditional writes.

        Write create-only (``If-None-Match: *``): one request for a new task id. Only when the
        key exists (412), read it with its ETag; a SUCCESS there stays, anything else is
        replaced with ``If-Match`` on that ETag, so a writer racing us (a late duplicate, a
        lost worker) can never slip in between the read and the write; a lost race (412/409,
        the key deleted meanwhile, or a 5xx that botocore's retries met as our own write)
        starts again from the create-only write. Celery's own flow (read, then write
        unconditionally) reads first every time, and a racing writer can overwrite a SUCCESS.

        Where the bucket does not honour conditional writes (Ceph RGW 16 on a versioned
        bucket: probed once per process, ``_conditional_writes_honoured``), it falls back to
        Celery's flow, read then write, with a warning.
        """
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
        object_key = self._object_key(self.get_key_for_task(task_id))
        sealed = self._seal(object_key, self.encode(meta), request)
        tags = self._tags(state)
        if not self._conditional_writes_honoured():
            # Celery's flow: read the previous result, keep a SUCCESS, else write over it.
            data = self.store.get(object_key)
            if data is None or self._previous_status(object_key, data) != states.SUCCESS:
                self.store.put(object_key, sealed, tags=tags)
            return result
        remember = state != states.SUCCESS
        ours = self._written.pop(object_key, None)
        if ours is not None:  # what this backend wrote last (STARTED, RETRY): over it at once
            try:
                self._wrote(
                    object_key,
                    self.store.put(object_key, sealed, if_match=ours, tags=tags),
                    remember,
                )
                return result
            except (ClientError, BotoCoreError) as exc:
                if not self._lost_race(exc):
                    raise
        delay = INCR_BACKOFF_START
        jitter = random.SystemRandom()
        for _ in range(STORE_MAX_ATTEMPTS):
            try:
                etag = self.store.put(object_key, sealed, if_none_match=True, tags=tags)
                self._wrote(object_key, etag, remember)
                return result
            except (ClientError, BotoCoreError) as exc:
                if not self._lost_race(exc):
                    raise
            current = self.store.get_with_etag(object_key)
            if current is None:  # deleted meanwhile: create it again
                continue
            data, etag = current
            if self._previous_status(object_key, data) == states.SUCCESS:
                return result
            try:
                self._wrote(
                    object_key,
                    self.store.put(object_key, sealed, if_match=etag, tags=tags),
                    remember,
                )
                return result
            except (ClientError, BotoCoreError) as exc:
                if not self._lost_race(exc):
                    raise
                if (
                    isinstance(exc, ClientError)
                    and is_write_conflict(exc)
                    and self.store.refused_unchanged(object_key, etag)
                ):
                    # The condition held and was refused: this bucket ignores it. What we read
                    # is no SUCCESS, so Celery's flow would write now; so do we.
                    _CONDITIONAL[self._probe_scope()] = False
                    logger.warning("%s: storing results without it", NOT_HONOURED)
                    self.store.put(object_key, sealed, tags=tags)
                    return result
            time.sleep(jitter.uniform(0, delay))
            delay = min(delay * 2, INCR_BACKOFF_MAX)
        raise ClientError(
            {"Error": {"Code": "ConditionalRequestConflict", "Message": "too much contention"}},
            f"store_result {object_key!r} after {STORE_MAX_ATTEMPTS} attempts",
        )

    def _wrote(self, object_key: str, etag: str, remember: bool) -> None:
        """Remember the ETag of a state this backend stored that is not final, so that the next
        state of that task (STARTED, then SUCCESS: the same worker process) goes out as one
        ``If-Match`` write; forgotten once used, and beyond the last ``STORE_MEMORY``."""
        if remember:  # each OrderedDict call is atomic: no lock (none to inherit held at fork)
            self._written[object_key] = etag
            while len(self._written) > STORE_MEMORY:
                try:
                    self._written.popitem(last=False)
                except KeyError:  # another thread emptied it meanwhile
                    break

    @staticmethod
    def _lost_race(exc: BaseException) -> bool:
        """A conditional write that may have lost a race, or whose outcome is unknown (a 5xx,
        a timeout, a reset): read again and decide again."""
        if isinstance(exc, ClientError):
            return is_write_conflict(exc) or is_missing_key(exc) or is_transient(exc)
        return is_transient(exc)

    def _previous_status(self, object_key: str, data: bytes) -> str:
        """The state of the result stored before ours. An object that cannot be opened counts
        as absent (failing would make the task's result unstorable for ever), except when KMS
        refuses or cannot be reached: that says nothing about the object, which may hold a
        SUCCESS a late duplicate must not overwrite, so the write fails and Celery reports it."""
        try:
            meta = self.decode(self._as_returned(self._open(object_key, data)))
        except KmsError:
            raise
        except EnvelopeError as exc:
            logger.warning(
                "previous result at %r cannot be opened (%s): writing the new result over it",
                object_key,
                type(exc).__name__,
            )
            return str(states.PENDING)
        return str(meta["status"])

    def _probe_scope(self) -> tuple[str | None, str, str]:
        return (self.endpoint_url, self.bucket_name, self.base_path)

    def _conditional_writes_honoured(self) -> bool:
        """Whether the bucket honours ``If-None-Match: *``, probed once per process (and
        endpoint, bucket and base path) by ``S3Store.honours_create_only``."""
        scope = self._probe_scope()
        known = _CONDITIONAL.get(scope)
        if known is not None:
            return known
        with _CONDITIONAL_LOCK:
            known = _CONDITIONAL.get(scope)
            if known is None:
                probe = self._object_key(f".envelope-probe-{uuid.uuid4().hex}")
                try:
                    known = self.store.honours_create_only(probe)
                except (ClientError, BotoCoreError) as exc:
                    # No right to write or delete that key, or S3 unreachable: Celery's flow,
                    # as before this probe existed; probed again next time if it may pass then.
                    logger.warning(
                        "could not probe s3://%s/%s for conditional writes (%s): storing "
                        "results by a read and an unconditional write",
                        self.bucket_name,
                        self.base_path,
                        error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__,
                    )
                    if not is_transient(exc):
                        _CONDITIONAL[scope] = False
                    return False
                _CONDITIONAL[scope] = known
                if not known:
                    logger.warning(
                        "s3://%s/%s does not honour If-None-Match (Ceph RGW 16 on a versioned "
                        "bucket; docs/compatibility.md): store_result falls back to a read and "
                        "an unconditional write, and a racing writer can overwrite a SUCCESS",
                        self.bucket_name,
                        self.base_path,
                    )
        return known

    # -- chords: a counter by conditional writes ---------------------------------------------
    def incr(self, key: str | bytes) -> int:
        """Add one to the sealed counter at ``key`` and return the new value, exactly once.

        Read the counter and its ETag, write the next value with If-Match (If-None-Match when
        absent), and on a lost race (412/409, or the key deleted meanwhile) back off with jitter
        and start again. The counter remembers the last ``INCR_MEMORY`` increments by a token
        of their own, so an attempt whose response was lost (a timeout, a reset, a 500 after
        the server applied it, or botocore's retry of it meeting our own write as a 412) is
        recognised on the next read instead of being counted twice.
        """
        object_key = self._object_key(key)
        token = uuid.uuid4().hex
        delay = INCR_BACKOFF_START
        jitter = random.SystemRandom()
        for _ in range(INCR_MAX_ATTEMPTS):
            try:
                done = self._incr_once(object_key, token)
            except ClientError as exc:
                if not (is_write_conflict(exc) or is_missing_key(exc) or is_transient(exc)):
                    raise
                logger.debug("chord counter %r: write raced or was lost, re-reading", object_key)
            except BotoCoreError as exc:
                if not is_transient(exc):
                    raise
                logger.debug("chord counter %r: response lost, re-reading", object_key)
            else:
                return done
            time.sleep(jitter.uniform(0, delay))
            delay = min(delay * 2, INCR_BACKOFF_MAX)
        raise ClientError(
            {"Error": {"Code": "ConditionalRequestConflict", "Message": "too much contention"}},
            f"incr {object_key!r} after {INCR_MAX_ATTEMPTS} attempts",
        )

    def _incr_once(self, object_key: str, token: str) -> int:
        """One read-and-conditional-write; the value of our increment if it is already in."""
        current = self.store.get_with_etag(object_key)
        value, recent = (0, []) if current is None else self._counter(object_key, current[0])
        for done_token, done_value in recent:
            if done_token == token:  # an earlier attempt of ours was applied after all
                return int(done_value)
        value += 1
        state = {"n": value, "recent": [*recent, [token, value]][-INCR_MEMORY:]}
        sealed = self._seal(object_key, json.dumps(state, separators=(",", ":")))
        if current is None:
            self.store.put(object_key, sealed, if_none_match=True, tags=self._tags(None))
        else:
            try:
                self.store.put(object_key, sealed, if_match=current[1], tags=self._tags(None))
            except ClientError as exc:
                if is_write_conflict(exc) and self.store.refused_unchanged(object_key, current[1]):
                    # Not a lost race: retrying could never succeed, and the chord would hang.
                    raise ClientError(
                        {"Error": {"Code": "ConditionalWriteNotHonoured", "Message": NOT_HONOURED}},
                        f"incr {object_key!r}",
                    ) from None
                raise
        return value

    def _counter(self, object_key: str, data: bytes) -> tuple[int, list[list[Any]]]:
        """The counter's value and its recent increments (a bare integer from older releases)."""
        text = self._open(object_key, data)
        text = text if isinstance(text, str) else text.decode("ascii")
        if text.lstrip().startswith("{"):
            state = json.loads(text)
            return int(state["n"]), [list(entry) for entry in state.get("recent", [])]
        return int(text), []

    @property
    def chord_counter_expires(self) -> float | None:
        """Seconds a chord counter is kept: Celery's ``chord_expires`` where it has one (5.7 and
        later: ``result_chord_expires``, else ``result_expires``), ``result_expires`` before."""
        if CELERY_HAS_CHORD_EXPIRES:
            return self.chord_expires  # type: ignore[no-any-return]
        return self.expires  # type: ignore[no-any-return]

    @property
    def client(self) -> _ChordStateClient:
        """For Celery 5.3 only, whose ``on_chord_part_return`` deletes a finished chord's counter
        with ``backend.client.delete(key)`` (Celery 5.4 and later call ``backend.delete``).
        Not an S3 client: that is ``store.client``."""
        return _ChordStateClient(self)

    def expire(self, key: str | bytes, value: Any) -> None:
        """S3 has no per-object TTL: expiry is ``cleanup``'s job (or a lifecycle rule's)."""

    # -- expiry ------------------------------------------------------------------------------
    def cleanup(self, now: datetime | None = None) -> None:
        """Delete expired results (Celery's daily ``celery.backend_cleanup`` calls this).

        Age is the object's LastModified against ``now``. Task results expire after
        ``result_expires``, failed ones after ``result_failure_expires`` when it is set; groups
        after ``result_expires``, chord counters after ``result_chord_expires`` (Celery 5.7 and
        later; ``result_expires`` under older Celery, which has no such setting).
        """
        now = now or datetime.now(UTC)
        deleted = self.store.delete_many(self._expired_keys(now))
        logger.info("cleanup deleted %d expired objects under %r", deleted, self.base_path)

    def _expired_keys(self, now: datetime) -> Iterator[str]:
        for prefix, expires in (
            (self.group_keyprefix, self.expires),
            (self.chord_keyprefix, self.chord_counter_expires),
        ):
            cutoff = _cutoff(now, expires)
            if cutoff is not None:
                for info in self.store.list(self._object_key(prefix)):
                    if info.last_modified <= cutoff:
                        yield info.key
        yield from self._expired_task_keys(now)

    def _expired_task_keys(self, now: datetime) -> Iterator[str]:
        default_cutoff = _cutoff(now, self.expires)
        failure_cutoff = _cutoff(now, self.failure_expires)
        if default_cutoff is None and failure_cutoff is None:
            return
        undecided: list[str] = []
        # Between the two expiries only the result's state decides: read it (the authenticated
        # envelope, not a tag anyone with PutObjectTagging could change).
        failures_first = default_cutoff is None or (
            failure_cutoff is not None and failure_cutoff > default_cutoff
        )
        for info in self.store.list(self._object_key(self.task_keyprefix)):
            past_default = default_cutoff is not None and info.last_modified <= default_cutoff
            past_failure = failure_cutoff is not None and info.last_modified <= failure_cutoff
            if past_default and past_failure:
                yield info.key
            elif past_default or past_failure:
                undecided.append(info.key)
                if len(undecided) >= CLEANUP_READ_BATCH:
                    yield from self._expired_by_state(undecided, failures_first)
                    undecided = []
        if undecided:
            yield from self._expired_by_state(undecided, failures_first)

    def _bodies(self, object_keys: list[str]) -> Iterable[tuple[str, bytes | None]]:
        """Each object's body, concurrently; one too large to read (``SizeLimitExceeded``) is
        logged and kept, and the rest are read one by one."""
        try:
            return self.store.get_many(object_keys).items()
        except EnvelopeError:
            pass
        bodies: list[tuple[str, bytes | None]] = []
        for object_key in object_keys:
            try:
                bodies.append((object_key, self.store.get(object_key)))
            except EnvelopeError as exc:
                logger.warning("cleanup: %r kept: %s", object_key, type(exc).__name__)
        return bodies

    def _expired_by_state(self, object_keys: list[str], failures: bool) -> Iterator[str]:
        """Those of ``object_keys`` that failed (``failures``) or did not; unreadable: kept."""
        for object_key, data in self._bodies(object_keys):
            if data is None:
                continue
            try:
                status = self.decode(self._as_returned(self._open(object_key, data)))["status"]
            except (EnvelopeError, KombuError, ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "cleanup: cannot read the state of %r (%s); kept until both expiries pass",
                    object_key,
                    type(exc).__name__,
                )
                continue
            if (status == states.FAILURE) == failures:
                yield object_key
