"""What an operation needs beyond its arguments: the Celery app, the keyring, one store per bucket.

Resolved lazily and without click, so that the command line and the shard task on a worker share
it. Celery, boto3 and the backend are imported only when a setting or a store is asked for: the
command line imports this module, and offline decode (a file and a keyring) must not need them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KeyringError
from ..keyring import DEFAULT_ENV_VAR, Keyring

if TYPE_CHECKING:
    from ..backend import EnvelopeS3Backend
    from ..store import S3Store

S3_SCHEME = "s3://"


class SettingsError(Exception):
    """The operation cannot run at all (no keyring, no bucket, bad app configuration)."""


@dataclass(frozen=True, slots=True)
class S3Options:
    """The S3 options a command was given; empty ones fall back to the Celery app's settings."""

    bucket: str | None = None
    prefix: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    """An AWS profile (``~/.aws/config``) for S3 and KMS, standalone only."""


@dataclass(frozen=True, slots=True)
class Prefix:
    """Every object under an S3 prefix (``s3://bucket/`` or ``s3://bucket/some/prefix/``)."""

    name: str
    bucket: str
    prefix: str

    @classmethod
    def of(cls, bucket: str, prefix: str = "") -> Prefix:
        return cls(name=f"{S3_SCHEME}{bucket}/{prefix}", bucket=bucket, prefix=prefix)

    @property
    def scope(self) -> str:
        """What KMS entries bind their encryption context to, as the backend does."""
        return f"{self.bucket}/{self.prefix}"


def load_keyring_file(path: Path, on_warning: Callable[[str], None] | None = None) -> Keyring:
    """Load a keyring file; its warnings (file mode, example keys) go to ``on_warning`` when
    given (the command line prints them as one-line notes), else stay Python warnings."""
    if on_warning is None:
        return Keyring.from_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keyring = Keyring.from_file(path)
    for warning in caught:
        on_warning(str(warning.message))
    return keyring


def backend_from_app(app: Any) -> EnvelopeS3Backend:
    """The app's backend when it is an ``EnvelopeS3Backend``, else one built from ``app.conf``
    (so ``celery -A proj envelope ...`` reuses the app's configuration)."""
    from ..backend import EnvelopeS3Backend

    if EnvelopeS3Backend.configured_for(app):
        backend = app.backend
        if isinstance(backend, EnvelopeS3Backend):
            return backend
    return EnvelopeS3Backend(app=app)


@dataclass
class Context:
    """The app (when run as ``celery -A proj envelope`` or in a worker), the S3 options, and
    what they resolve to, each built once."""

    options: S3Options = field(default_factory=S3Options)
    app: Any = None
    """The Celery app (celery ships no type information)."""
    on_warning: Callable[[str], None] | None = None
    """Where a keyring file's warnings go (see ``load_keyring_file``)."""
    _backend: EnvelopeS3Backend | None = None
    _stores: dict[str, S3Store] = field(default_factory=dict)

    # -- Celery app ---------------------------------------------------------------------------
    def backend(self) -> EnvelopeS3Backend:
        """The app's result backend, which must be this project's."""
        if self._backend is None:
            if self.app is None:
                raise SettingsError("no Celery app: run as `celery -A proj envelope ...`")
            try:
                self._backend = backend_from_app(self.app)
            except Exception as exc:  # ImproperlyConfigured and friends: one line, no trace
                raise SettingsError(
                    f"Celery app {self.app.main or '?'!r}: result backend unusable: {exc}"
                ) from None
        return self._backend

    # -- keyring ------------------------------------------------------------------------------
    def keyring(self, path: Path | None) -> Keyring:
        """``path``, else the app's keyring, else ``$CELERY_S3_ENVELOPE_KEYRING``."""
        try:
            if path is not None:
                return load_keyring_file(path, self.on_warning)
            if self.app is not None:
                return self.backend().keyring
            if os.environ.get(DEFAULT_ENV_VAR):
                return Keyring.from_env()
        except KeyringError as exc:
            raise SettingsError(f"keyring: {exc}") from None
        raise SettingsError(f"no keyring: pass --keyring PATH (or set {DEFAULT_ENV_VAR})")

    def keyring_for(self, target: Prefix, path: Path | None) -> Keyring:
        """The keyring that seals or verifies under ``target``: its KMS entries bound to the
        target's scope (``bucket/prefix``) as the backend binds them to ``bucket/base_path``,
        so key policies conditioned on the scope keep working for what rotate and migrate
        write. KMS is called as the app's backend would: under ``celery -A proj envelope``,
        the app's ``envelope_kms_*`` settings and S3 credentials; standalone, boto3's usual
        chain (``AWS_ENDPOINT_URL_KMS``, ``AWS_DEFAULT_REGION``, credentials) and ``--region``."""
        keyring = self.keyring(path)
        if not keyring.uses_kms:
            return keyring
        from ..kms import KmsProvider

        if self.app is None:
            provider = KmsProvider(
                region=self.options.region, scope=target.scope, profile=self.options.profile
            )
            return keyring.with_kms(provider)
        from celery.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

        from ..settings import SCHEME, kms_provider_from_settings, resolve_settings

        conf = self.app.conf
        url = conf.get("result_backend")
        ours = isinstance(url, str) and url.startswith(f"{SCHEME}://")
        try:
            settings = resolve_settings(conf, url=url if ours else None)  # the URL overrides conf
            provider = kms_provider_from_settings(settings, target.scope)
        except ImproperlyConfigured as exc:
            raise SettingsError(f"KMS settings: {exc}") from None
        return keyring.with_kms(provider)

    # -- S3 -----------------------------------------------------------------------------------
    def default_prefix(self) -> Prefix | None:
        """``--bucket``/``--prefix``, else the app's bucket and base path; None if neither."""
        bucket, prefix = self.options.bucket, self.options.prefix
        if bucket is None and self.app is not None:
            backend = self.backend()
            bucket = backend.bucket_name
            if prefix is None:
                prefix = backend.base_path or ""
        if bucket is None:
            return None
        return Prefix.of(bucket, prefix or "")

    def store(self, bucket: str) -> S3Store:
        """One store per bucket: the app's own when it is the app's bucket and no option
        overrides the endpoint, else a new client from the options and boto3's usual chain."""
        store = self._stores.get(bucket)
        if store is not None:
            return store
        from ..pipeline import DEFAULT_MAX_SIZE, largest_envelope
        from ..store import S3Store

        bound = largest_envelope(DEFAULT_MAX_SIZE)  # what the commands' pipeline opens
        overridden = any(
            value is not None
            for value in (self.options.endpoint_url, self.options.region, self.options.profile)
        )
        if self.app is not None and not overridden:
            backend = self.backend()
            if backend.bucket_name == bucket:
                store = backend.store
            else:  # another bucket on the app's own endpoint and credentials
                conf: Any = self.app.conf
                store = S3Store(
                    bucket,
                    endpoint_url=conf.get("s3_endpoint_url"),
                    region=conf.get("s3_region"),
                    access_key_id=conf.get("s3_access_key_id"),
                    secret_access_key=conf.get("s3_secret_access_key"),
                    max_object_size=bound,
                )
        else:
            store = S3Store(
                bucket,
                endpoint_url=self.options.endpoint_url,
                region=self.options.region,
                max_object_size=bound,
                profile=self.options.profile,
            )
        self._stores[bucket] = store
        return store
