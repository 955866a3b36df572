"""AWS KMS key-encryption keys: cache bounds, failures, mixed keyrings (moto KMS on 127.0.0.1)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from celery import states
from click.testing import CliRunner

import celery_s3_envelope as cse
from celery_s3_envelope.cli import envelope as cli_group
from celery_s3_envelope.envelope import WrapMethod, pack, unpack
from celery_s3_envelope.kms import KmsError, KmsKey, KmsProvider, parse_kms_body
from celery_s3_envelope.ops.rotate import Rotation
from celery_s3_envelope.ops.sweep import Outcome
from celery_s3_envelope.pipeline import Pipeline
from celery_s3_envelope.store import S3Store
from support.kms import CountingKms, fake_keyring, moto_kms_client

KEY = "celery-task-meta-3e1f0a2b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_reuses_one_intermediate_key_and_opens_with_one_decrypt() -> None:
    kms = CountingKms()
    keyring, _ = fake_keyring(kms)
    envelopes = [cse.seal(f"v{i}", key=KEY, keyring=keyring) for i in range(100)]
    assert kms.generated == 1
    assert all(cse.unseal(e, keyring=keyring, key=KEY) == f"v{i}" for i, e in enumerate(envelopes))
    assert kms.decrypted == 1


def test_cache_entry_past_its_age_is_not_used_again() -> None:
    kms, clock = CountingKms(), FakeClock()
    keyring, _ = fake_keyring(kms, cache_seconds=60, cache_uses=1000, clock=clock)
    cse.seal("a", key=KEY, keyring=keyring)
    clock.now += 59.9
    cse.seal("b", key=KEY, keyring=keyring)
    assert kms.generated == 1
    clock.now += 0.2
    cse.seal("c", key=KEY, keyring=keyring)
    assert kms.generated == 2


def test_cached_decrypt_past_its_age_is_not_used_again() -> None:
    """A KMS key disabled meanwhile stops opening results in a running process once the cached
    Decrypt result is older than ``cache_seconds``: the bound docs/security.md states."""
    kms, clock = CountingKms(), FakeClock()
    keyring, _ = fake_keyring(kms, cache_seconds=60, cache_uses=1000, clock=clock)
    envelope = cse.seal("still readable", key=KEY, keyring=keyring)
    assert cse.unseal(envelope, keyring=keyring, key=KEY) == "still readable"
    assert kms.decrypted == 1
    kms.refusal = "DisabledException"
    clock.now += 59.9
    assert cse.unseal(envelope, keyring=keyring, key=KEY) == "still readable"  # cached
    assert kms.decrypted == 1
    clock.now += 0.2
    with pytest.raises(KmsError) as caught:
        cse.unseal(envelope, keyring=keyring, key=KEY)
    assert kms.decrypted == 2 and caught.value.code == "DisabledException"


def test_decrypt_refused_for_a_disabled_key_names_the_kek_and_the_code() -> None:
    kms = CountingKms()
    writer, _ = fake_keyring(kms)
    envelope = cse.seal("secret-value", key=KEY, keyring=writer)
    kms.refusal = "DisabledException"
    reader, _ = fake_keyring(kms)  # another process: nothing cached
    with pytest.raises(KmsError) as caught:
        cse.unseal(envelope, keyring=reader, key=KEY)
    assert (caught.value.kek_id, caught.value.code) == ("kms-1", "DisabledException")
    assert "'kms-1'" in str(caught.value) and "DisabledException" in str(caught.value)
    assert "secret-value" not in f"{caught.value} {caught.value!r}"
    assert kms.decrypted == 1


def test_cache_entry_past_its_uses_is_not_used_again() -> None:
    kms = CountingKms()
    keyring, _ = fake_keyring(kms, cache_uses=3)
    blobs = [
        parse_kms_body(cse.inspect(cse.seal("x", key=KEY, keyring=keyring)).wrap_body)[1]
        for _ in range(7)
    ]
    assert kms.generated == 3  # uses 1-3, 4-6, 7
    assert len(set(blobs)) == 3 and blobs[0] == blobs[2] != blobs[3]


@pytest.mark.parametrize("setting", [{"cache_seconds": 0}, {"cache_uses": 0}])
def test_cache_off_means_one_kms_call_per_result(setting: dict[str, int]) -> None:
    kms = CountingKms()
    keyring, _ = fake_keyring(kms, **setting)
    envelopes = [cse.seal("v", key=KEY, keyring=keyring) for _ in range(20)]
    assert kms.generated == 20
    for envelope in envelopes:
        cse.unseal(envelope, keyring=keyring, key=KEY)
    assert kms.decrypted == 20  # twenty intermediate keys, one Decrypt each


def test_changed_scope_in_the_slot_fails_at_kms_and_names_the_kek() -> None:
    kms = CountingKms()
    keyring, _ = fake_keyring(kms, scope="bucket/prefix/")
    parts = unpack(cse.seal("secret", key=KEY, keyring=keyring))
    scope, blob, wrapped = parse_kms_body(parts.header.wrap_body)
    assert scope == "bucket/prefix/"
    other = b"bucket/other!!/"
    body = len(other).to_bytes(2) + other + len(blob).to_bytes(2) + blob + wrapped
    forged = pack(
        parts.header.with_slot(wrap_method=WrapMethod.KMS, kek_id="kms-1", wrap_body=body),
        bytes(parts.ciphertext),
    )
    with pytest.raises(KmsError, match=r"kms-1.*InvalidCiphertextException") as caught:
        cse.unseal(forged, keyring=keyring, key=KEY)
    assert caught.value.code == "InvalidCiphertextException"


def test_kms_slot_scope_change_is_detected_even_with_a_warm_decrypt_cache() -> None:
    kms = CountingKms()
    keyring, _ = fake_keyring(kms, scope="bucket/a")
    envelope = cse.seal("regulated value", key=KEY, keyring=keyring)
    assert cse.unseal(envelope, keyring=keyring, key=KEY) == "regulated value"  # warms the cache
    at = envelope.index(b"bucket/a")
    tampered = envelope[:at] + b"bucket/b" + envelope[at + len(b"bucket/a") :]
    with pytest.raises(cse.EnvelopeError):  # a cold reader gets KmsError here
        cse.unseal(tampered, keyring=keyring, key=KEY)


def test_kms_intermediate_key_cache_is_not_inherited_across_fork() -> None:
    """A prefork child draws its own intermediate key: the parent's cached one (and its
    remaining uses) stay with the parent."""
    kms = CountingKms()
    keyring, _ = fake_keyring(kms, scope="bucket/a", cache_uses=10)
    provider = keyring.active.provider  # type: ignore[attr-defined]
    arn = keyring.active.kms_key_id  # type: ignore[attr-defined]
    parent_ik = provider.data_key("kms-1", arn, "bucket/a")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it reused the parent's key, then leave at once
        try:
            child_ik = provider.data_key("kms-1", arn, "bucket/a")
            os.write(writer, b"same" if child_ik == parent_ik else b"own")
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 16)
    os.close(reader)
    os.waitpid(pid, 0)
    assert answer == b"own"
    assert provider.data_key("kms-1", arn, "bucket/a") == parent_ik  # the parent keeps its own


# -- against moto's KMS server --------------------------------------------------------------


def kms_from_environment(monkeypatch: pytest.MonkeyPatch, kms_endpoint: str) -> None:
    """KMS configured as a fresh process finds it: boto3's usual environment only."""
    for name, value in {
        "AWS_ENDPOINT_URL_KMS": kms_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("celery_s3_envelope.kms._default_provider", None)


@pytest.fixture
def kms_client(kms_endpoint: str) -> Any:
    return moto_kms_client(kms_endpoint)


def counted_provider(kms_endpoint: str, calls: list[str], **args: Any) -> KmsProvider:
    provider = KmsProvider(
        endpoint_url=kms_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        scope="results-bucket/celery/",
        **args,
    )
    provider.client.meta.events.register(
        "before-send.kms.*",
        lambda request, **_: calls.append(request.headers["X-Amz-Target"].decode().split(".")[-1]),
    )
    return provider


def kms_keyring(arn: str, provider: KmsProvider) -> cse.Keyring:
    return cse.Keyring.from_dict(
        {
            "version": 1,
            "keys": [
                {
                    "id": "kms-1",
                    "kms_key_id": arn,
                    "state": "active",
                    "created": "2026-11-25T00:00:00Z",
                }
            ],
        }
    ).with_kms(provider)


@pytest.mark.parametrize(("cache", "expected"), [({}, 1), ({"cache_seconds": 0}, 1000)])
def test_thousand_results_count_kms_calls(
    kms_endpoint: str, kms_client: Any, cache: dict[str, int], expected: int
) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    calls: list[str] = []
    keyring = kms_keyring(arn, counted_provider(kms_endpoint, calls, **cache))
    pipeline = Pipeline()
    values = [json.dumps({"status": "SUCCESS", "result": i}) for i in range(1000)]
    envelopes = [pipeline.seal(v, key=f"{KEY}-{i}", keyring=keyring) for i, v in enumerate(values)]
    assert calls.count("GenerateDataKey") == expected
    assert [
        pipeline.unseal(e, keyring=keyring, key=f"{KEY}-{i}") for i, e in enumerate(envelopes)
    ] == values


def test_keyring_naming_another_kms_key_fails_clearly(kms_endpoint: str, kms_client: Any) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    other = kms_client.create_key()["KeyMetadata"]["Arn"]
    provider = counted_provider(kms_endpoint, [])
    envelope = cse.seal("secret-value", key=KEY, keyring=kms_keyring(arn, provider))
    reader = kms_keyring(other, counted_provider(kms_endpoint, []))
    with pytest.raises(KmsError, match="kms-1") as caught:
        cse.unseal(envelope, keyring=reader, key=KEY)
    assert caught.value.code == "AccessDeniedException"
    assert "secret-value" not in str(caught.value)


def test_offline_decode_with_a_keyring_file_naming_the_kms_key(
    kms_endpoint: str, kms_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    envelope = cse.seal(
        "offline", key=KEY, keyring=kms_keyring(arn, counted_provider(kms_endpoint, []))
    )
    path = tmp_path / "keys.json"
    kms_keyring(arn, counted_provider(kms_endpoint, [])).to_file(path)
    assert arn in path.read_text() and '"key"' not in path.read_text()
    kms_from_environment(monkeypatch, kms_endpoint)
    assert cse.unseal(envelope, keyring=cse.Keyring.from_file(path)) == "offline"


def test_cli_decode_of_a_kms_envelope_needs_kms_and_says_so_in_one_line(
    kms_endpoint: str, kms_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    sealed = tmp_path / "result.bin"
    sealed.write_bytes(
        cse.seal("offline", key=KEY, keyring=kms_keyring(arn, counted_provider(kms_endpoint, [])))
    )
    path = tmp_path / "keys.json"
    kms_keyring(arn, counted_provider(kms_endpoint, [])).to_file(path)
    monkeypatch.setattr("celery_s3_envelope.kms._default_provider", None)
    args = ["decode", "--raw", str(sealed), "--keyring", str(path)]
    # No region, no credentials (the autouse fixture clears AWS_*): KMS cannot be asked.
    offline = CliRunner().invoke(cli_group, args)
    assert offline.exit_code == 4, offline.output  # KMS unreachable: a runtime failure
    (line,) = offline.stderr.strip().splitlines()
    assert str(sealed) in line and "KMS request failed" in line
    assert "Traceback" not in offline.output and "offline" not in offline.stdout
    kms_from_environment(monkeypatch, kms_endpoint)
    online = CliRunner().invoke(cli_group, args)
    assert online.exit_code == 0, online.output
    assert online.stdout == "offline"


def test_mixed_keyring_rewraps_local_to_kms_and_back(kms_endpoint: str, kms_client: Any) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    provider = counted_provider(kms_endpoint, [])
    local = cse.LocalKey("local-1", os.urandom(32), cse.KeyState.ACTIVE)
    keyring = cse.Keyring([local, KmsKey("kms-1", arn, cse.KeyState.DECRYPT, provider=provider)])
    envelope = cse.seal("moving", key=KEY, keyring=keyring)
    to_kms = keyring.with_state("kms-1", cse.KeyState.ACTIVE)
    parts = unpack(envelope)
    dek = local.unwrap(
        parts.header.wrap_body, salt=parts.header.salt, associated_data=parts.associated_data
    )
    kms_body = to_kms.active.wrap(
        dek, salt=parts.header.salt, associated_data=parts.associated_data
    )
    moved = pack(
        parts.header.with_slot(wrap_method=WrapMethod.KMS, kek_id="kms-1", wrap_body=kms_body),
        bytes(parts.ciphertext),
    )
    assert cse.inspect(moved).kek_id == "kms-1"
    assert bytes(unpack(moved).ciphertext) == bytes(parts.ciphertext)  # payload untouched
    only_kms = cse.Keyring([KmsKey("kms-1", arn, cse.KeyState.ACTIVE, provider=provider)])
    assert cse.unseal(moved, keyring=only_kms, key=KEY) == "moving"


def test_rotation_moves_500_results_from_a_local_kek_to_kms_and_back(
    kms_endpoint: str, kms_client: Any, store: S3Store
) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    prefix = "rotating/"

    def provider() -> KmsProvider:  # a fresh process's: nothing cached
        return KmsProvider(
            endpoint_url=kms_endpoint,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
            scope=f"{store.bucket}/{prefix}",
        )

    local = cse.LocalKey("local-1", os.urandom(32), cse.KeyState.ACTIVE)
    on_local = cse.Keyring([local, KmsKey("kms-1", arn, cse.KeyState.DECRYPT)]).with_kms(provider())
    keys = [f"{prefix}celery-task-meta-{i:04d}" for i in range(500)]
    values = {key: json.dumps({"status": "SUCCESS", "result": key}) for key in keys}

    def put(key: str) -> bytes:
        envelope = cse.seal(values[key], key=key, keyring=on_local)
        store.put(key, envelope)
        return bytes(unpack(envelope).ciphertext)

    with ThreadPoolExecutor(16) as pool:
        payloads = dict(zip(keys, pool.map(put, keys), strict=True))

    def assert_all_under(kek_id: str, reader: cse.Keyring) -> None:
        stored = store.get_many(keys)
        assert {cse.inspect(stored[key] or b"").kek_id for key in keys} == {kek_id}
        for key in keys:
            data = stored[key] or b""
            assert cse.unseal(data, keyring=reader, key=key) == values[key]
            assert bytes(unpack(data).ciphertext) == payloads[key]  # rewrapped, not re-encrypted

    on_kms = on_local.with_state("kms-1", cse.KeyState.ACTIVE)
    to_kms = Rotation(store, on_kms, prefix=prefix, workers=16).run()
    assert to_kms.ok, to_kms.failures
    assert to_kms.counts[Outcome.REWRAPPED] == 500
    only_kms = cse.Keyring([KmsKey("kms-1", arn, cse.KeyState.ACTIVE)]).with_kms(provider())
    assert_all_under("kms-1", only_kms)

    back = on_kms.with_state("local-1", cse.KeyState.ACTIVE)
    to_local = Rotation(store, back, prefix=prefix, workers=16).run()
    assert to_local.ok, to_local.failures
    assert to_local.counts[Outcome.REWRAPPED] == 500
    assert_all_under("local-1", cse.Keyring([local]))


def test_kms_entries_show_no_secrets() -> None:
    entry = KmsKey("kms-1", "arn:aws:kms:eu-west-1:111122223333:key/abc", cse.KeyState.ACTIVE)
    assert "arn:aws:kms" in json.dumps(entry.describe())
    provider = KmsProvider(access_key_id="AKIAEXAMPLE", secret_access_key="very-secret-value")
    assert "very-secret" not in repr(provider) and "AKIA" not in repr(provider)


# -- through the backend ----------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize(("cache", "expected"), [({}, 1), ({"envelope_kms_cache_uses": 0}, 1000)])
def test_backend_round_trip_of_1000_results_counts_generate_data_key(
    make_app: Any, kms_endpoint: str, kms_client: Any, cache: dict[str, int], expected: int
) -> None:
    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    keyring = {
        "version": 1,
        "keys": [
            {"id": "kms-1", "kms_key_id": arn, "state": "active", "created": "2026-11-25T00:00:00Z"}
        ],
    }
    app = make_app(
        envelope_keyring=keyring,
        envelope_kms_endpoint_url=kms_endpoint,
        envelope_kms_region="us-east-1",
        s3_base_path="kms/",
        **cache,
    )
    backend = app.backend
    calls: list[str] = []
    backend.keyring.active.provider.client.meta.events.register(
        "before-send.kms.*",
        lambda request, **_: calls.append(request.headers["X-Amz-Target"].decode().split(".")[-1]),
    )
    for i in range(1000):
        backend.set(f"celery-task-meta-{i}", f'{{"result": {i}}}')
    assert calls.count("GenerateDataKey") == expected
    assert backend.get("celery-task-meta-999") == '{"result": 999}'
    scope = cse.inspect(backend.store.get("kms/celery-task-meta-0") or b"").wrap_body
    assert backend.bucket_name.encode() + b"/kms/" in scope  # the context names bucket and prefix


def test_store_result_never_writes_over_a_result_kms_refuses_to_open(
    make_app: Any, kms_endpoint: str, kms_client: Any
) -> None:
    def backend_under(arn: str) -> Any:
        entry = {
            "id": "kms-1",
            "kms_key_id": arn,
            "state": "active",
            "created": "2026-11-30T00:00:00Z",
        }
        keyring = {"version": 1, "keys": [entry]}
        app = make_app(
            envelope_keyring=keyring,
            envelope_kms_endpoint_url=kms_endpoint,
            envelope_kms_region="us-east-1",
        )
        return app.backend

    arn = kms_client.create_key()["KeyMetadata"]["Arn"]
    backend_under(arn).store_result("t", "done", states.SUCCESS)
    # A worker whose KMS key may not decrypt that result (another key: AccessDenied).
    other = backend_under(kms_client.create_key()["KeyMetadata"]["Arn"])
    with pytest.raises(KmsError) as caught:
        other.store_result("t", "late duplicate", states.FAILURE)
    assert caught.value.code == "AccessDeniedException"
    assert backend_under(arn).get_task_meta("t")["result"] == "done"
