"""Every setting of the backend: names, the ``s3envelope://`` URL form, conversion, validation,
and the factories that build a keyring, a pipeline, a store and a KMS provider from them.

The backend and the command line both resolve settings here, so a value means the same thing
wherever it is read. A bad value raises Celery's ``ImproperlyConfigured`` naming the setting.
``docs/backend.md`` is the reference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from celery.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

from .errors import KeyringError
from .keyring import DEFAULT_ENV_VAR, Keyring
from .kms import DEFAULT_CACHE_SECONDS, DEFAULT_CACHE_USES, KmsProvider
from .pipeline import (
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_COMPRESSION_MIN_SIZE,
    DEFAULT_MAX_SIZE,
    Pipeline,
    largest_envelope,
)
from .scrub import clear_frames
from .store import S3Store
from .tenants import (
    DEFAULT_CACHE_SECONDS as TENANT_CACHE_SECONDS,
)
from .tenants import (
    DEFAULT_CACHE_SIZE as TENANT_CACHE_SIZE,
)
from .tenants import (
    KEY_STORE_DIR,
    DirectoryKeyObjects,
    KeyObjects,
    S3KeyObjects,
    Selector,
    TenantKeyStore,
    load_selector,
)

__all__ = [
    "SCHEME",
    "SETTINGS",
    "kms_provider_from_settings",
    "load_keyring",
    "masked_url",
    "pipeline_from_settings",
    "resolve_settings",
    "setting_bool",
    "settings_from_url",
    "store_from_settings",
    "tenant_selector_from_settings",
    "tenant_store_from_settings",
]

SCHEME = "s3envelope"
"""The URL scheme (never ``s3``: an entry point of that name would replace Celery's own)."""

EXPIRY_MODES = ("cleanup", "lifecycle")

RETRY_MODES = ("standard", "adaptive", "legacy")

_URL_QUERY = {
    "region": "s3_region",
    "endpoint_url": "s3_endpoint_url",
    "keyring": "envelope_keyring",
    "compression_level": "envelope_compression_level",
    "compression_min_size": "envelope_compression_min_size",
    "max_size": "envelope_max_size",
    "allow_plaintext": "envelope_allow_plaintext",
    "max_pool_connections": "s3_max_pool_connections",
    "mget_concurrency": "s3_mget_concurrency",
    "retries_mode": "s3_retries_mode",
    "max_attempts": "s3_max_attempts",
    "connect_timeout": "s3_connect_timeout",
    "read_timeout": "s3_read_timeout",
    "expiry": "envelope_expiry",
    "kms_endpoint_url": "envelope_kms_endpoint_url",
    "kms_region": "envelope_kms_region",
    "kms_cache_seconds": "envelope_kms_cache_seconds",
    "kms_cache_uses": "envelope_kms_cache_uses",
    "tenant_keystore": "envelope_tenant_keystore",
    "tenant_cache_size": "envelope_tenant_cache_size",
    "tenant_cache_seconds": "envelope_tenant_cache_seconds",
}
SETTINGS = (
    # Celery's own S3Backend settings, same meaning:
    "s3_bucket",
    "s3_base_path",
    "s3_endpoint_url",
    "s3_region",
    "s3_access_key_id",
    "s3_secret_access_key",
    # this backend's:
    "envelope_keyring",
    "envelope_compression_level",
    "envelope_compression_min_size",
    "envelope_max_size",
    "envelope_allow_plaintext",
    "envelope_allow_example_keys",
    "s3_put_extra_args",
    "s3_max_pool_connections",
    "s3_mget_concurrency",
    "s3_retries_mode",
    "s3_max_attempts",
    "s3_connect_timeout",
    "s3_read_timeout",
    "envelope_expiry",
    "envelope_kms_endpoint_url",
    "envelope_kms_region",
    "envelope_kms_cache_seconds",
    "envelope_kms_cache_uses",
    "envelope_tenant_selector",
    "envelope_tenant_keystore",
    "envelope_tenant_cache_size",
    "envelope_tenant_cache_seconds",
)
"""Every setting the backend reads from ``app.conf`` (and accepts in ``options``)."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def resolve_settings(
    conf: Mapping[str, Any], options: Mapping[str, Any] | None = None, url: str | None = None
) -> dict[str, Any]:
    """Every setting the backend reads: ``app.conf``, overridden by ``options``, then by the
    URL's values (the backend and the command line's KMS set-up resolve them alike)."""
    settings: dict[str, Any] = {name: conf.get(name) for name in SETTINGS}
    settings.update(options or {})
    if url:
        settings.update(settings_from_url(url))
    return settings


def settings_from_url(url: str) -> dict[str, Any]:
    """``s3envelope://[key_id:secret@]bucket/base/path?region=..`` as setting names -> values.

    The path names a folder: ``/results`` and ``/results/`` both give ``s3_base_path='results/'``.
    """
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ImproperlyConfigured(f"result_backend URL must start with {SCHEME}://")
    userinfo, _, bucket = parts.netloc.rpartition("@")
    found: dict[str, Any] = {}
    if bucket:
        found["s3_bucket"] = unquote(bucket)
    if userinfo:
        key_id, _, secret = userinfo.partition(":")
        if not key_id or not secret:
            raise ImproperlyConfigured(
                f"the {SCHEME}:// URL gives an access key id without its secret (or the reverse): "
                "give both (ID:SECRET@bucket) or neither (credentials from boto3's chain)"
            )
        found["s3_access_key_id"] = unquote(key_id)
        found["s3_secret_access_key"] = unquote(secret)
    path = unquote(parts.path).lstrip("/")
    if path:
        found["s3_base_path"] = path if path.endswith("/") else path + "/"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        setting = _URL_QUERY.get(name)
        if setting is None:
            raise ImproperlyConfigured(
                f"unknown parameter {name!r} in the {SCHEME}:// URL "
                f"(known: {', '.join(sorted(_URL_QUERY))})"
            )
        if setting in found:
            raise ImproperlyConfigured(f"parameter {name!r} is given twice in the {SCHEME}:// URL")
        if not value.strip():
            raise ImproperlyConfigured(
                f"parameter {name!r} of the {SCHEME}:// URL is empty: give a value or leave it out"
            )
        if setting == "envelope_keyring" and value.lstrip().startswith("{"):
            raise ImproperlyConfigured(
                f"the keyring parameter of the {SCHEME}:// URL takes a path: a URL is printed "
                "(worker banner, celery inspect conf, celery report), so key material never "
                "belongs in it; set envelope_keyring instead"
            )
        found[setting] = value
    return found


def setting_int(
    settings: Mapping[str, Any], name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    value = settings.get(name)
    if value is None:
        return default
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, not {number}")
    return number


def setting_float(
    settings: Mapping[str, Any], name: str, default: float, *, zero_ok: bool = False
) -> float:
    value = settings.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name} must be a finite number, not {value!r}")
    if number < 0 or (number == 0 and not zero_ok):
        raise ImproperlyConfigured(
            f"{name} must be {'>= 0' if zero_ok else 'positive'}, not {number}"
        )
    return number


def setting_bool(settings: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """A flag given as a bool or as text (``1/true/yes/on``, ``0/false/no/off``); unset or
    empty (``?allow_plaintext=`` in a URL): ``default``."""
    value = settings.get(name)
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if not text:
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def optional_str(settings: Mapping[str, Any], name: str) -> str | None:
    value = settings.get(name)
    return str(value) if value else None


def refuse_example_keys(keyring: Keyring, settings: Mapping[str, Any]) -> Keyring:
    """The published keys of ``keys.example`` protect nothing: refused, unless
    ``envelope_allow_example_keys`` says this is a demo."""
    if keyring.holds_example_keys and not setting_bool(settings, "envelope_allow_example_keys"):
        raise ImproperlyConfigured(
            "envelope_keyring holds the published example keys of keys.example, which protect "
            "nothing: create your own with `celery-s3-envelope keys generate` (for a demo only: "
            "envelope_allow_example_keys = True)"
        )
    return keyring


def load_keyring(value: object) -> Keyring:
    """``envelope_keyring`` as given: a path, the keyring's JSON (text starting with ``{``), a
    dict or a ``Keyring``; unset: ``$CELERY_S3_ENVELOPE_KEYRING``, read by the same rule.
    No message ever quotes the value: it may hold key material."""
    try:
        if isinstance(value, Keyring):
            return value
        if isinstance(value, Mapping):
            return Keyring.from_dict(value)
        if isinstance(value, str) and value:
            return Keyring.from_text(value)
        if isinstance(value, os.PathLike):
            return Keyring.from_file(value)
        if value is None or value == "":
            if os.environ.get(DEFAULT_ENV_VAR):
                return Keyring.from_env()
            raise ImproperlyConfigured(
                "envelope_keyring is not set: give a keyring file path, the keyring's JSON, a dict "
                f"or a Keyring (or put the path or the JSON in {DEFAULT_ENV_VAR})"
            )
    except KeyringError as exc:
        clear_frames(exc)  # the frames that parsed it hold the keyring's text: key material
        message = f"envelope_keyring: {exc}"
    else:
        kind = type(value).__name__
        message = f"envelope_keyring must be a path, JSON, a dict or a Keyring, not {kind}"
    raise ImproperlyConfigured(message) from None


def masked_url(url: str) -> str:
    """``url`` with the password of its user info, if any, shown as ``**``."""
    parts = urlsplit(url)
    if not parts.scheme or parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:**@{host}"))


def pipeline_from_settings(settings: Mapping[str, Any]) -> Pipeline:
    return Pipeline(
        compression_level=setting_int(
            settings, "envelope_compression_level", DEFAULT_COMPRESSION_LEVEL, -7, 22
        ),
        compression_min_size=setting_int(
            settings, "envelope_compression_min_size", DEFAULT_COMPRESSION_MIN_SIZE, 0
        ),
        max_size=setting_int(settings, "envelope_max_size", DEFAULT_MAX_SIZE, 1),
    )


def endpoint_url(settings: Mapping[str, Any], name: str) -> str | None:
    """An endpoint setting: unset, or an http(s) URL with a host."""
    value = optional_str(settings, name)
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ImproperlyConfigured(f"{name} must be an http(s):// URL, not {value!r}")
    return value


def store_from_settings(settings: Mapping[str, Any]) -> S3Store:
    """The store, bounded like the pipeline: nothing larger than an envelope of a value of
    ``envelope_max_size`` is read."""
    put_extra_args = settings.get("s3_put_extra_args") or {}
    if not isinstance(put_extra_args, Mapping):
        raise ImproperlyConfigured("s3_put_extra_args must be a dict of PutObject arguments")
    retries_mode = str(settings.get("s3_retries_mode") or "standard")
    if retries_mode not in RETRY_MODES:
        raise ImproperlyConfigured(f"s3_retries_mode must be one of {', '.join(RETRY_MODES)}")
    max_pool = settings.get("s3_max_pool_connections")
    max_attempts = settings.get("s3_max_attempts")
    return S3Store(
        str(settings["s3_bucket"]),
        endpoint_url=endpoint_url(settings, "s3_endpoint_url"),
        region=optional_str(settings, "s3_region"),
        access_key_id=optional_str(settings, "s3_access_key_id"),
        secret_access_key=optional_str(settings, "s3_secret_access_key"),
        put_extra_args=put_extra_args,
        max_pool_connections=None
        if max_pool is None
        else setting_int(settings, "s3_max_pool_connections", 10, 1),
        mget_concurrency=setting_int(settings, "s3_mget_concurrency", 16, 1),
        retries_mode=retries_mode,
        max_attempts=None
        if max_attempts is None
        else setting_int(settings, "s3_max_attempts", 3, 1),
        connect_timeout=setting_float(settings, "s3_connect_timeout", 10),
        read_timeout=setting_float(settings, "s3_read_timeout", 60),
        max_object_size=largest_envelope(
            setting_int(settings, "envelope_max_size", DEFAULT_MAX_SIZE, 1)
        ),
    )


def kms_provider_from_settings(settings: Mapping[str, Any], scope: str) -> KmsProvider:
    """The KMS client and caches for the keyring's KMS entries: the S3 credentials and region
    unless the ``envelope_kms_*`` settings say otherwise; the scope names bucket and prefix."""
    return KmsProvider(
        endpoint_url=endpoint_url(settings, "envelope_kms_endpoint_url"),
        region=optional_str(settings, "envelope_kms_region") or optional_str(settings, "s3_region"),
        access_key_id=optional_str(settings, "s3_access_key_id"),
        secret_access_key=optional_str(settings, "s3_secret_access_key"),
        scope=scope,
        cache_seconds=setting_float(
            settings, "envelope_kms_cache_seconds", DEFAULT_CACHE_SECONDS, zero_ok=True
        ),
        cache_uses=setting_int(settings, "envelope_kms_cache_uses", DEFAULT_CACHE_USES, 0),
    )


def tenant_selector_from_settings(settings: Mapping[str, Any]) -> Selector | None:
    """``envelope_tenant_selector``: a callable, or ``"module:callable"``; unset: None (every
    result under the keyring's active KEK)."""
    spec = settings.get("envelope_tenant_selector")
    if spec is None or spec == "":
        return None
    try:
        return load_selector(spec)
    except (ValueError, ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(f"envelope_tenant_selector: {exc}") from None


def tenant_objects_from_settings(
    settings: Mapping[str, Any], store: S3Store, base_path: str
) -> KeyObjects:
    """Where tenant KEKs live (``envelope_tenant_keystore``): ``"bucket"`` (the default) in the
    results bucket under ``<s3_base_path>.envelope-tenant-keys/``; a directory's absolute path
    (or ``file:PATH``) for a key store in files."""
    value = optional_str(settings, "envelope_tenant_keystore") or "bucket"
    if value == "bucket":
        return S3KeyObjects(store, base_path + KEY_STORE_DIR)
    path = value[len("file:") :] if value.startswith("file:") else value
    if not os.path.isabs(path):
        raise ImproperlyConfigured(
            "envelope_tenant_keystore must be 'bucket' or a directory's absolute path"
        )
    return DirectoryKeyObjects(path)


def tenant_store_from_settings(
    settings: Mapping[str, Any], keyring: Keyring, store: S3Store, base_path: str
) -> TenantKeyStore:
    """The tenant key store: read lazily, so building it costs no request."""
    return TenantKeyStore(
        tenant_objects_from_settings(settings, store, base_path),
        keyring,
        cache_size=setting_int(settings, "envelope_tenant_cache_size", TENANT_CACHE_SIZE, 1),
        cache_seconds=setting_float(
            settings, "envelope_tenant_cache_seconds", TENANT_CACHE_SECONDS, zero_ok=True
        ),
    )
