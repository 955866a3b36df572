"""Configuring the backend: settings, the ``s3envelope://`` URL, ``as_uri``, the entry point,
pickling, and ``backend_from_app`` for the command line."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from celery import Celery, states
from celery._state import get_current_app
from celery.app.backends import by_name, by_url
from celery.backends.s3 import S3Backend
from celery.exceptions import ImproperlyConfigured

from celery_s3_envelope import Keyring
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.ops.context import backend_from_app
from support.apps import MakeApp, backend_of
from support.celery_features import needs_result_compression
from support.s3 import S3Endpoint


@pytest.fixture
def current(make_app: MakeApp) -> Iterator[Callable[..., Celery]]:
    """``make_app`` whose apps become the current app (what unpickling uses); restored after."""
    previous = get_current_app()

    def make(**conf: object) -> Celery:
        app = make_app(**conf)
        app.set_current()
        return app

    yield make
    previous.set_current()


def test_the_scheme_is_registered_as_s3envelope_and_never_as_s3() -> None:
    registered = {ep.name: ep.value for ep in entry_points(group="celery.result_backends")}
    assert registered.get("s3envelope") == "celery_s3_envelope.backend:EnvelopeS3Backend"
    assert "s3" not in registered
    assert by_url("s3envelope://bucket/path")[0] is EnvelopeS3Backend
    assert by_name("s3") is S3Backend


def test_url_configures_and_overrides_settings(make_app: MakeApp, bucket: str) -> None:
    app = make_app(
        s3_bucket="overridden",
        s3_region="us-east-1",
        result_backend=f"s3envelope://{bucket}/base/path?region=eu-west-1&mget_concurrency=4",
    )
    backend = backend_of(app)
    assert (backend.bucket_name, backend.base_path) == (bucket, "base/path/")
    assert backend.store.client.meta.region_name == "eu-west-1"
    assert backend.store.mget_concurrency == 4
    backend.set("k", "through the url")
    assert backend.get("k") == "through the url"
    assert backend.store.get("base/path/k") is not None


def test_url_endpoint_and_credentials(
    make_app: MakeApp, s3_endpoint: S3Endpoint, bucket: str
) -> None:
    url = (
        f"s3envelope://{s3_endpoint.access_key_id}:{s3_endpoint.secret_access_key}@{bucket}/r"
        f"?endpoint_url={s3_endpoint.endpoint_url}"
    )
    app = make_app(
        result_backend=url,
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key_id=None,
        s3_secret_access_key=None,
    )
    backend = backend_of(app)
    backend.set("k", "v")
    assert backend.get("k") == "v"
    shown = backend.as_uri()
    assert s3_endpoint.secret_access_key not in shown
    assert shown == (
        f"s3envelope://{s3_endpoint.access_key_id}:**@{bucket}/r"
        f"?endpoint_url={s3_endpoint.endpoint_url}"
    )
    assert backend.as_uri(include_password=True) == url


def test_as_uri_without_url_shows_no_secret(backend: EnvelopeS3Backend, bucket: str) -> None:
    assert backend.as_uri() == f"s3envelope://{bucket}/"
    assert backend.as_uri(include_password=True) == f"s3envelope://{bucket}/"


def test_url_with_an_unknown_parameter_is_refused(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown parameter 'regoin'"):
        backend_of(make_app(result_backend="s3envelope://bucket?regoin=eu-west-1"))


def test_keyring_from_path_dict_object_or_environment(
    make_app: MakeApp,
    keyring: Keyring,
    keyring_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = backend_of(make_app())
    writer.set("k", "sealed once")
    sources: list[object] = [str(keyring_file), keyring_file, keyring.to_dict(), keyring]
    for source in sources:
        assert backend_of(make_app(envelope_keyring=source)).get("k") == "sealed once"
    monkeypatch.setenv("CELERY_S3_ENVELOPE_KEYRING", keyring_file.read_text())
    assert backend_of(make_app(envelope_keyring=None)).get("k") == "sealed once"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"envelope_keyring": None}, "envelope_keyring is not set"),
        ({"envelope_keyring": "/nonexistent/keys.json"}, "envelope_keyring: cannot read"),
        ({"envelope_keyring": {"keys": []}}, "envelope_keyring: a keyring needs"),
        ({"envelope_keyring": 42}, "envelope_keyring must be"),
        ({"envelope_compression_level": 99}, "envelope_compression_level must be at most 22"),
        ({"envelope_compression_min_size": "big"}, "envelope_compression_min_size must be an"),
        ({"envelope_max_size": 0}, "envelope_max_size must be at least 1"),
        ({"envelope_allow_plaintext": "maybe"}, "envelope_allow_plaintext must be true or"),
        ({"s3_mget_concurrency": 0}, "s3_mget_concurrency must be at least 1"),
        ({"s3_put_extra_args": "AES256"}, "s3_put_extra_args must be a dict"),
        ({"s3_retries_mode": "eager"}, "s3_retries_mode must be one of standard"),
        ({"s3_read_timeout": -1}, "s3_read_timeout must be positive"),
    ],
)
def test_bad_settings_name_the_setting(
    make_app: MakeApp, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        EnvelopeS3Backend(app=make_app(**settings))


def test_keyring_errors_do_not_show_key_material(make_app: MakeApp, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"keys": [{"id": "k1", "state": "active", "key": "c2VjcmV0IQ=="')
    path.chmod(0o600)
    with pytest.raises(ImproperlyConfigured) as refused:
        EnvelopeS3Backend(app=make_app(envelope_keyring=str(path)))
    assert "c2VjcmV0IQ" not in str(refused.value)


def test_store_settings_reach_the_client(make_app: MakeApp) -> None:
    backend = backend_of(
        make_app(
            s3_max_pool_connections=40,
            s3_mget_concurrency=8,
            s3_put_extra_args={"ServerSideEncryption": "AES256"},
            s3_max_attempts=7,
            s3_read_timeout=5,
        )
    )
    config = backend.store.client.meta.config
    assert config.max_pool_connections == 40
    assert config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert config.read_timeout == 5
    assert backend.store.mget_concurrency == 8
    assert backend.store.put_extra_args == {"ServerSideEncryption": "AES256"}


@needs_result_compression
def test_celery_57_settings_are_supported_without_warnings(make_app: MakeApp) -> None:
    app = make_app(result_compression="zlib", result_failure_expires=3600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = backend_of(app)
    assert backend.compression == "zlib"
    assert backend.failure_expires == 3600


def test_result_failure_expires_is_read_on_every_celery(make_app: MakeApp) -> None:
    """The backend reads ``result_failure_expires`` itself, so it applies under Celery releases
    older than 5.7 too, which do not know the setting."""
    app = make_app(result_failure_expires=3600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend = backend_of(app)
    assert backend.failure_expires == 3600
    assert backend_of(make_app(result_expires=60)).failure_expires == 60  # unset: result_expires


def test_pickled_backend_keeps_its_url_and_settings(
    current: Callable[..., Celery], bucket: str
) -> None:
    app = current(result_backend=f"s3envelope://{bucket}/from/url?region=eu-central-1")
    backend = EnvelopeS3Backend(app=app, url=app.conf.result_backend)
    backend.store_result("t", "survives pickling", states.SUCCESS)
    clone = pickle.loads(pickle.dumps(backend))
    assert isinstance(clone, EnvelopeS3Backend) and clone is not backend
    assert clone.url == backend.url
    assert (clone.bucket_name, clone.base_path) == (bucket, "from/url/")
    assert clone.store.region == "eu-central-1"
    assert clone.keyring.active.id == backend.keyring.active.id
    assert clone.get_result("t") == "survives pickling"
    stock = S3Backend(app=app, url=app.conf.result_backend)
    assert pickle.loads(pickle.dumps(stock)).url is None  # what this test guards against


def test_pickled_backend_keeps_its_constructor_options(
    current: Callable[..., Celery], bucket: str
) -> None:
    app = current()
    backend = EnvelopeS3Backend(app=app, options={"s3_base_path": "opt/"}, expires=60)
    clone = pickle.loads(pickle.dumps(backend))
    assert (clone.base_path, clone.expires) == ("opt/", 60)
    with pytest.raises(ImproperlyConfigured, match="unknown backend options: s3_buckett"):
        EnvelopeS3Backend(app=app, options={"s3_buckett": bucket})


def test_backend_from_app_reuses_the_apps_backend(make_app: MakeApp) -> None:
    app = make_app()
    assert backend_from_app(app) is app.backend


def test_backend_from_app_builds_one_from_the_settings(make_app: MakeApp, bucket: str) -> None:
    app = make_app(result_backend="cache+memory://", s3_base_path="cli/")
    backend = backend_from_app(app)
    assert isinstance(backend, EnvelopeS3Backend) and backend is not app.backend
    assert (backend.bucket_name, backend.base_path) == (bucket, "cli/")


def test_bare_scheme_url_takes_everything_from_settings(make_app: MakeApp, bucket: str) -> None:
    """The README's two-setting switch: ``result_backend = "s3envelope://"``."""
    backend = make_app(result_backend="s3envelope://", s3_base_path="celery/").backend
    assert (backend.bucket_name, backend.base_path) == (bucket, "celery/")
    assert backend.as_uri() == f"s3envelope://{bucket}/celery/"
