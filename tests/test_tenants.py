"""Per-tenant KEKs (docs/tenants.md): ids, the key store's bindings, creation races, shredding,
root rotation, both roots (local and KMS), the backend's selector and the commands."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import celery_s3_envelope as cse
from celery_s3_envelope.backend import EnvelopeS3Backend
from celery_s3_envelope.cli import envelope
from celery_s3_envelope.envelope import pack_parts, unpack
from celery_s3_envelope.errors import (
    IntegrityError,
    InvalidTenantId,
    KeyringError,
    ShreddedKey,
    UnknownKey,
)
from celery_s3_envelope.kek import KeyState
from celery_s3_envelope.kms import KmsKey, KmsProvider
from celery_s3_envelope.pipeline import Pipeline
from celery_s3_envelope.store import S3Store
from celery_s3_envelope.tenants import (
    KEY_STORE_DIR,
    DirectoryKeyObjects,
    KeyObjects,
    S3KeyObjects,
    TaskRequest,
    TenantKeys,
    TenantKeyStore,
    keys_for_request,
    parse_tenant_kek_id,
    tenant_kek_id,
    validate_tenant_id,
)
from support.apps import backend_of
from support.cli import invoke
from support.keys import with_active_k2
from support.kms import kms_key_arn
from support.s3 import count_requests, fresh_bucket

PIPELINE = Pipeline()

HOSTILE_IDS: list[Any] = [
    "",
    "a" * 65,
    "x" * 100_000,
    "../etc",
    "a/b",
    "..",
    ".hidden",
    "-flag",
    "acme\x1b[31m",
    "acme\n",
    "acme\x00",
    "ac\u202eme",
    "acmé",
    "acme\udcff",
    b"acme",
    b"\xff\xfe",
    None,
    42,
]


def _store(objects: KeyObjects, keyring: cse.Keyring, **options: Any) -> TenantKeyStore:
    return TenantKeyStore(objects, keyring, **options)


def _seal(keys: TenantKeyStore, tenant: str | None, key: str, value: str = "v") -> bytes:
    return PIPELINE.seal(value, key=key, keyring=TenantKeys(keys, keys.keyring, tenant))


def _open(keys: TenantKeyStore, key: str, data: bytes) -> str | bytes:
    return PIPELINE.unseal(data, keyring=TenantKeys(keys, keys.keyring, None), key=key)


@pytest.fixture
def directory(tmp_path: Path) -> DirectoryKeyObjects:
    return DirectoryKeyObjects(tmp_path / "tenant-keys")


# -- tenant ids are untrusted -------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_tenant_ids_are_refused_without_being_quoted(hostile: Any) -> None:
    with pytest.raises(InvalidTenantId) as caught:
        validate_tenant_id(hostile)
    message = str(caught.value)
    assert len(message) < 200
    if isinstance(hostile, str) and hostile:
        assert hostile not in message


def test_valid_tenant_ids_make_bounded_kek_ids() -> None:
    longest = "A" * 64
    assert validate_tenant_id("acme-eu.1_x") == "acme-eu.1_x"
    kek_id = tenant_kek_id(longest, 999_999_999)
    assert len(kek_id.encode()) <= 255 and parse_tenant_kek_id(kek_id) == (longest, 999_999_999)


@pytest.mark.parametrize(
    "forged", ["t/../../etc/passwd/1", "t/acme/0", "t/acme/01", "t/acme/x", "t/acme", "t//1"]
)
def test_a_forged_tenant_kek_id_in_a_header_never_reaches_the_store(
    directory: DirectoryKeyObjects, forged: str
) -> None:
    """A header's KEK id is untrusted: only a well-formed one is looked up."""
    keyring = cse.Keyring.generate()
    keys = _store(directory, keyring)
    sealed = _seal(keys, "acme", "obj")
    parts = unpack(sealed)
    header = parts.header
    relabelled = pack_parts(
        bytes(parts.associated_data[5:]),
        header.wrap_method,
        forged.encode(),
        header.wrap_body,
        bytes(parts.ciphertext),
    )
    reads: list[str] = []
    original = directory.read
    directory.read = lambda name: reads.append(name) or original(name)  # type: ignore[method-assign]
    with pytest.raises(UnknownKey) as caught:
        _open(keys, "obj", relabelled)
    assert not isinstance(caught.value, ShreddedKey)
    assert reads == []


def test_the_keyring_refuses_ids_in_the_tenant_namespace() -> None:
    with pytest.raises(KeyringError, match="reserved"):
        cse.Keyring.generate("t/acme/1")


def test_a_selector_returning_a_hostile_id_fails_the_seal(directory: DirectoryKeyObjects) -> None:
    keyring = cse.Keyring.generate()
    keys = _store(directory, keyring)
    for hostile in ("../x", "a" * 1000, "\x1b]0;pwn\x07", b"\xff"):
        with pytest.raises(InvalidTenantId):
            keys_for_request(
                TaskRequest(kwargs={"t": hostile}),
                keyring=keyring,
                store=keys,
                selector=lambda request: request.kwargs["t"],
            )
    assert list(directory.names()) == []


# -- the store's bindings -------------------------------------------------------------------------


def test_an_envelope_relabelled_to_another_tenant_is_refused(
    directory: DirectoryKeyObjects,
) -> None:
    keyring = cse.Keyring.generate()
    keys = _store(directory, keyring)
    sealed = _seal(keys, "alice", "obj")
    _seal(keys, "bob", "other")  # bob's KEK exists: the relabelled slot names a real key
    parts = unpack(sealed)
    header = parts.header
    assert header.kek_id == "t/alice/1"
    relabelled = pack_parts(
        bytes(parts.associated_data[5:]),
        header.wrap_method,
        b"t/bob/1",
        header.wrap_body,
        bytes(parts.ciphertext),
    )
    with pytest.raises(IntegrityError):
        _open(_store(directory, keyring), "obj", relabelled)
    assert _open(_store(directory, keyring), "obj", sealed) == "v"


@pytest.mark.parametrize("edit_field", [False, True], ids=["copied", "copied-and-edited"])
def test_swapping_two_tenants_key_records_is_refused(
    directory: DirectoryKeyObjects, edit_field: bool
) -> None:
    """The root wrap is bound to the tenant KEK's id: a record under another tenant's name does
    not open, even with its ``kek_id`` field rewritten to match."""
    keyring = cse.Keyring.generate()
    keys = _store(directory, keyring)
    sealed = _seal(keys, "bob", "obj")
    _seal(keys, "alice", "other")
    alice = directory.read("alice/1")
    assert alice is not None
    record = json.loads(alice[0])
    if edit_field:
        record["kek_id"] = "t/bob/1"
    directory.put("bob/1", json.dumps(record).encode())
    with pytest.raises(IntegrityError, match="does not open with root KEK"):
        _open(_store(directory, keyring), "obj", sealed)


def test_two_processes_creating_one_tenant_converge_on_one_key(store: S3Store, bucket: str) -> None:
    keyring = cse.Keyring.generate()
    objects = S3KeyObjects(store, KEY_STORE_DIR)
    stores = [_store(objects, keyring) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    sealed: dict[int, bytes] = {}

    def create(i: int) -> None:
        barrier.wait()
        sealed[i] = _seal(stores[i], "acme", f"obj-{i}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(objects.names()) == ["acme/1"]
    for i, data in sealed.items():  # every writer sealed under the one key the store holds
        assert _open(_store(objects, keyring), f"obj-{i}", data) == "v"


def test_the_directory_store_converges_too(directory: DirectoryKeyObjects) -> None:
    keyring = cse.Keyring.generate()
    first, second = _store(directory, keyring), _store(directory, keyring)
    first_key = first.active("acme")
    assert second._create("acme", 1) is False
    assert second.active("acme").to_dict()["key"] == first_key.to_dict()["key"]


def test_a_first_use_reads_only_that_tenants_folder(
    directory: DirectoryKeyObjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = cse.Keyring.generate()
    for i in range(50):
        _store(directory, keyring).active(f"t{i}")
    listed: list[str] = []
    iterdir = Path.iterdir

    def recording(path: Path) -> Any:
        listed.append(path.name)
        return iterdir(path)

    monkeypatch.setattr(Path, "iterdir", recording)
    keys = _store(directory, keyring)
    _seal(keys, "t7", "obj")
    _seal(keys, "new", "obj")
    assert listed == ["t7"]  # "new" has no folder yet: nothing to list; no other tenant's
    assert [name for name in directory.names("new/")] == ["new/1"]
    assert len(list(directory.names())) == 51  # the whole listing still sees every tenant


# -- the cache: lazy and bounded ----------------------------------------------------------------


def test_the_cache_is_bounded_and_expires(directory: DirectoryKeyObjects) -> None:
    keyring = cse.Keyring.generate()
    now = [0.0]
    keys = _store(directory, keyring, cache_size=3, cache_seconds=10, clock=lambda: now[0])
    sealed = {tenant: _seal(keys, tenant, tenant) for tenant in (f"t{i}" for i in range(10))}
    assert keys.cached() == 3
    other = _store(directory, keyring)
    other.shred("t9")
    assert _open(keys, "t9", sealed["t9"]) == "v"  # cached: the bound docs/tenants.md names
    now[0] = 11.0
    with pytest.raises(ShreddedKey):
        _open(keys, "t9", sealed["t9"])


def test_expired_keys_leave_the_cache_unasked(directory: DirectoryKeyObjects) -> None:
    """Past ``cache_seconds`` a KEK leaves memory at the store's next use, even if nobody asks
    for that key again (a shredded tenant's key is not kept for days)."""
    keyring = cse.Keyring.generate()
    now = [0.0]
    keys = _store(directory, keyring, cache_seconds=10, clock=lambda: now[0])
    _seal(keys, "acme", "a")
    assert keys.cached() == 1
    now[0] = 11.0
    _seal(keys, "bob", "b")
    assert keys.cached() == 1 and all("acme" not in kek for kek in keys._keys)


@pytest.mark.parametrize("age", [float("nan"), float("inf"), -1.0])
def test_a_cache_age_must_be_finite(directory: DirectoryKeyObjects, age: float) -> None:
    with pytest.raises(ValueError):
        _store(directory, cse.Keyring.generate(), cache_seconds=age)


def test_a_shredded_tenants_key_is_never_used_again_even_if_its_record_reappears(
    directory: DirectoryKeyObjects,
) -> None:
    """The tombstone wins: a record restored from a backup, or put back by a rewrap racing the
    shred, opens nothing."""
    keyring = cse.Keyring.generate()
    keys = _store(directory, keyring)
    sealed = _seal(keys, "acme", "a")
    record = (directory.root / "acme" / "1.json").read_bytes()
    keys.shred("acme")
    (directory.root / "acme" / "1.json").write_bytes(record)  # back from a backup
    with pytest.raises(ShreddedKey):
        _open(_store(directory, keyring), "a", sealed)
    with pytest.raises(ShreddedKey):
        _seal(_store(directory, keyring), "acme", "again")


def test_a_failed_rotation_leaves_no_tenant_key_in_its_frames(
    directory: DirectoryKeyObjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails after the new KEK was made (a timeout once the write was applied):
    the traceback's frames hold no copy of the key."""
    keys = _store(directory, cse.Keyring.generate())
    _seal(keys, "acme", "a")
    made: list[bytes] = []
    urandom = os.urandom

    def recorded(size: int) -> bytes:
        made.append(urandom(size))
        return made[-1]

    def failing(name: str, data: bytes) -> bool:
        raise TimeoutError("the write timed out")

    monkeypatch.setattr(os, "urandom", recorded)
    monkeypatch.setattr(directory, "create", failing)
    with pytest.raises(TimeoutError) as caught:
        keys.new_version("acme")
    keys_made = [m for m in made if len(m) == 32]
    assert keys_made
    tb = caught.value.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            assert not any(isinstance(value, bytes) and key in value for key in keys_made)
        tb = tb.tb_next


def test_building_a_backend_reads_no_tenant_key(make_app: Any, store: S3Store, bucket: str) -> None:
    backend = backend_of(make_app(envelope_tenant_selector=_tenant_from_kwargs))
    with count_requests(backend.store.client) as seen:
        backend.tenant_keys.cached()
    assert len(seen) == 0 and backend.tenant_keys.cached() == 0


# -- shredding ------------------------------------------------------------------------------------


def test_shredding_deletes_every_version_of_the_key_records(
    s3_endpoint: Any, s3_client: Any
) -> None:
    with fresh_bucket(s3_client, versioned=True) as name:
        store = s3_endpoint.store(name)
        keyring = cse.Keyring.generate()
        objects = S3KeyObjects(store, KEY_STORE_DIR)
        keys = _store(objects, keyring)
        sealed = _seal(keys, "acme", "a")
        keys.new_version("acme")
        keep = _seal(keys, "bob", "b")
        # a noncurrent version and a delete marker of acme's records, as a careless copy leaves
        record = objects.read("acme/1")
        assert record is not None
        store.put(KEY_STORE_DIR + "acme/1", record[0])
        store.delete(KEY_STORE_DIR + "acme/2")
        versions_before = s3_client.list_object_versions(
            Bucket=name, Prefix=KEY_STORE_DIR + "acme/"
        )
        assert len(versions_before.get("Versions", [])) == 3
        deleted = keys.shred("acme")
        assert deleted == 4  # three versions and one delete marker
        left = s3_client.list_object_versions(Bucket=name, Prefix=KEY_STORE_DIR + "acme/")
        assert [v["Key"] for v in left.get("Versions", [])] == [KEY_STORE_DIR + "acme/shredded"]
        assert not left.get("DeleteMarkers")
        fresh = _store(objects, keyring)
        with pytest.raises(ShreddedKey):
            _open(fresh, "a", sealed)
        with pytest.raises(ShreddedKey):  # a shredded tenant id is never reused
            _seal(fresh, "acme", "again")
        assert _open(fresh, "b", keep) == "v"


def test_shredding_deletes_a_record_written_before_versioning_was_enabled(
    s3_endpoint: Any, s3_client: Any
) -> None:
    """A record from before versioning was turned on is the ``null`` version: deleted by its
    version id, not hidden under a delete marker (which would leave the key restorable)."""
    with fresh_bucket(s3_client) as name:
        store = s3_endpoint.store(name)
        keyring = cse.Keyring.generate()
        keys = _store(S3KeyObjects(store, KEY_STORE_DIR), keyring)
        sealed = _seal(keys, "acme", "a")
        s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        keys.new_version("acme")
        try:
            keys.shred("acme")
            left = s3_client.list_object_versions(Bucket=name, Prefix=KEY_STORE_DIR + "acme/")
            assert [v["Key"] for v in left.get("Versions", [])] == [KEY_STORE_DIR + "acme/shredded"]
            assert not left.get("DeleteMarkers")
            with pytest.raises(ShreddedKey):
                _open(_store(S3KeyObjects(store, KEY_STORE_DIR), keyring), "a", sealed)
        finally:  # fresh_bucket(versioned=False) would not empty the versions
            page = s3_client.list_object_versions(Bucket=name)
            items = [*page.get("Versions", ()), *page.get("DeleteMarkers", ())]
            for item in items:
                s3_client.delete_object(Bucket=name, Key=item["Key"], VersionId=item["VersionId"])


def test_shredding_a_directory_store_deletes_stray_copies_of_the_records(
    directory: DirectoryKeyObjects,
) -> None:
    """A writer killed between writing its temporary file and renaming it leaves a dot-file
    copy of the record; an operator may leave a backup beside it: shred deletes them all."""
    keyring = cse.Keyring.generate()
    keys = _store(directory, keyring)
    sealed = _seal(keys, "acme", "a")
    folder = directory.root / "acme"
    record = (folder / "1.json").read_bytes()
    for stray in (".1.json.4242.0a1b2c3d4e5f", "1.json.bak", "1-copy.json"):
        (folder / stray).write_bytes(record)
    keys.shred("acme")
    assert sorted(entry.name for entry in folder.iterdir()) == ["shredded.json"]
    with pytest.raises(ShreddedKey):
        _open(_store(directory, keyring), "a", sealed)


def test_an_unknown_tenant_key_is_unknown_not_shredded(directory: DirectoryKeyObjects) -> None:
    keyring = cse.Keyring.generate()
    sealed = _seal(_store(directory, keyring), "acme", "a")
    (directory.root / "acme" / "1.json").unlink()  # lost, not shredded
    with pytest.raises(UnknownKey) as caught:
        _open(_store(directory, keyring), "a", sealed)
    assert not isinstance(caught.value, ShreddedKey)


# -- the root: rotation and KMS -----------------------------------------------------------------


def test_root_rotation_rewraps_tenant_keys_only(store: S3Store, bucket: str) -> None:
    k1 = cse.Keyring.generate("k1")
    objects = S3KeyObjects(store, "celery/" + KEY_STORE_DIR)
    keys = _store(objects, k1)
    tenants = [f"tenant-{i}" for i in range(12)]
    results = {}
    for tenant in tenants:
        key = f"celery/celery-task-meta-{tenant}"
        results[key] = _seal(keys, tenant, key)
        store.put(key, results[key])
    k2 = k1.with_entry(cse.LocalKey("k2", b"\x02" * 32, KeyState.ACTIVE), activate=True)
    rotated = _store(objects, k2)
    with count_requests(store.client) as seen:
        done = rotated.rewrap_root()
    assert (done.listed, done.rewrapped, done.current) == (12, 12, 0)
    assert seen.methods.count("GET") == 1 + 12  # one listing page, one read per record
    assert seen.methods.count("PUT") == 12
    assert len(seen) == 25
    assert all("/celery-task-meta-" not in url for _, url in seen.sent)  # no result touched
    assert all("If-Match" in c for c in seen.conditional if c.startswith("PUT"))
    k2_only = cse.Keyring([cse.LocalKey("k2", b"\x02" * 32, KeyState.ACTIVE)])
    for key, data in results.items():  # the old root is gone: tenant results still open
        assert store.get(key) == data
        assert _open(_store(objects, k2_only), key, data) == "v"
    assert rotated.rewrap_root().current == 12


def test_a_kms_root_wraps_and_opens_tenant_keys(
    kms_endpoint: str, directory: DirectoryKeyObjects
) -> None:
    provider = KmsProvider(
        endpoint_url=kms_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        scope="bucket/celery/",
    )
    arn = kms_key_arn(kms_endpoint)
    keyring = cse.Keyring([KmsKey("kms-root", arn, KeyState.ACTIVE)]).with_kms(provider)
    keys = _store(directory, keyring)
    sealed = _seal(keys, "acme", "obj")
    record = directory.read("acme/1")
    assert record is not None and json.loads(record[0])["root_method"] == "kms"
    reader_provider = KmsProvider(
        endpoint_url=kms_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    reader = cse.Keyring([KmsKey("kms-root", arn, KeyState.ACTIVE)]).with_kms(reader_provider)
    assert _open(_store(directory, reader), "obj", sealed) == "v"
    other_arn = kms_key_arn(kms_endpoint)  # another KMS key under the same KEK id: refused
    wrong = cse.Keyring([KmsKey("kms-root", other_arn, KeyState.ACTIVE)]).with_kms(reader_provider)
    with pytest.raises(cse.EnvelopeError):
        _open(_store(directory, wrong), "obj", sealed)
    _store(directory, reader).shred("acme")
    with pytest.raises(ShreddedKey):
        _open(_store(directory, reader), "obj", sealed)


# -- the backend and the commands ---------------------------------------------------------------


def _tenant_from_kwargs(request: TaskRequest) -> str | None:
    tenant = request.kwargs.get("tenant")
    return None if tenant is None else str(tenant)


class _Request:
    def __init__(self, tenant: str | None) -> None:
        self.task = "proj.work"
        self.headers: dict[str, Any] = {}
        self.kwargs = {} if tenant is None else {"tenant": tenant}
        self.id = "x"


def _app(make_app: Any, **conf: Any) -> Celery:
    return make_app(s3_base_path="celery/", envelope_tenant_selector=_tenant_from_kwargs, **conf)


def test_the_backend_seals_under_the_selected_tenant(make_app: Any, store: S3Store) -> None:
    backend: EnvelopeS3Backend = backend_of(_app(make_app))
    backend.store_result("t-acme", {"n": 1}, "SUCCESS", request=_Request("acme"))
    backend.store_result("t-none", {"n": 2}, "SUCCESS", request=_Request(None))
    backend.store_result("t-bare", {"n": 3}, "SUCCESS")
    kek = {
        task: cse.inspect(store.get(f"celery/celery-task-meta-{task}") or b"").kek_id
        for task in ("t-acme", "t-none", "t-bare")
    }
    assert kek == {"t-acme": "t/acme/1", "t-none": "k1", "t-bare": "k1"}
    reader = backend_of(make_app(s3_base_path="celery/"))  # no selector: opens them all
    assert reader.get_task_meta("t-acme")["result"] == {"n": 1}
    assert reader.get_task_meta("t-none")["result"] == {"n": 2}


def test_rotate_tenant_shred_and_scan(make_app: Any, store: S3Store, bucket: str) -> None:
    app = _app(make_app)
    backend: EnvelopeS3Backend = backend_of(app)
    for tenant in ("acme", "bob"):
        for i in range(3):
            backend.store_result(f"{tenant}-{i}", i, "SUCCESS", request=_Request(tenant))
    backend.store_result("plain", 0, "SUCCESS")

    done = invoke(envelope, "rotate", "--tenant", "acme", "--json", app=app)
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["rewrapped"], report["skipped"], report["target_kek"]) == (3, 4, "t/acme/2")
    plain = invoke(envelope, "rotate", "--json", app=app)  # the keyring's rotation: tenants kept
    assert json.loads(plain.output)["skipped"] == 6

    listed = invoke(envelope, "keys", "tenants", "--json", app=app)
    assert listed.exit_code == 0, listed.output
    rows = {row["tenant"]: row for row in json.loads(listed.output)["tenants"]}
    assert rows["acme"]["kek_versions"] == [1, 2] and rows["acme"]["results"] == 3
    assert rows["bob"]["active_kek"] == "t/bob/1"

    refused = invoke(envelope, "shred", "--tenant", "acme", app=app)
    assert refused.exit_code == 2 and "--yes" in refused.output
    shredded = invoke(envelope, "shred", "--tenant", "acme", "--yes", app=app)
    assert shredded.exit_code == 0, shredded.output
    backend.tenant_keys.forget("acme")
    with pytest.raises(ShreddedKey):
        backend.get_task_meta("acme-0")
    assert backend.get_task_meta("bob-0")["result"] == 0

    scanned = invoke(envelope, "scan", "--verify", "--json", app=app)
    assert scanned.exit_code == 0, scanned.output  # shredded is not damage
    document = json.loads(scanned.output)
    assert (
        document["shredded"] == 3 and document["foreign"] == 2
    )  # the key store: bob/1, acme/shredded
    assert document["verify"]["shredded"] == 3 and document["verify"]["failed"] == 0
    assert {t["tenant"]: t["shredded"] for t in document["tenants"]} == {
        "acme": True,
        "bob": False,
    }
    text = invoke(envelope, "scan", app=app)
    assert "1 shredded, holding 3 objects" in text.output


def test_commands_escape_and_refuse_hostile_tenant_ids(make_app: Any) -> None:
    app = _app(make_app)
    for hostile in ("\x1b[2J\x1b[31mroot", "../../x", "a" * 500):
        for args in (("shred", "--tenant", hostile, "--yes"), ("rotate", "--tenant", hostile)):
            result = invoke(envelope, *args, app=app)
            assert result.exit_code == 2
            assert "\x1b" not in result.output and hostile not in result.output
            assert len(result.output.splitlines()) == 1
    missing = invoke(envelope, "shred", "--tenant", "nobody", "--yes", app=app)
    assert missing.exit_code == 2 and "no tenant 'nobody'" not in missing.output


def test_hostile_tenant_ids_read_from_a_bucket_are_escaped(make_app: Any, store: S3Store) -> None:
    """A tenant folder in the key store with a bidirectional override (or C1 CSI) is never
    listed raw: not a tenant id, so not a tenant. (S3's XML cannot carry C0 controls.)"""
    app = _app(make_app)
    store.put(f"celery/{KEY_STORE_DIR}ev\u202eil/1", b"{}")
    store.put(f"celery/{KEY_STORE_DIR}ev\x9bil/1", b"{}")
    backend_of(app).store_result("a", 1, "SUCCESS", request=_Request("acme"))
    listed = invoke(envelope, "keys", "tenants", app=app)
    assert listed.exit_code == 0, listed.output
    assert "\u202e" not in listed.output and "\x9b" not in listed.output
    assert "acme" in listed.output


def test_decode_opens_a_tenants_result_offline_with_a_copy_of_the_key_store(
    make_app: Any, store: S3Store, keyring_file: Path, tmp_path: Path
) -> None:
    """Years later, offline: the object's file, the keyring and a copy of the tenant key store in
    files (``--tenant-keys DIR``) open a tenant's result; the keyring alone says what is missing
    in one line; after the tenant is shredded the result reads as shredded, not damaged."""
    keys_dir = tmp_path / "tenant-keys"
    app = _app(make_app, envelope_tenant_keystore=str(keys_dir))
    backend_of(app).store_result("t-acme", {"card": "4111"}, "SUCCESS", request=_Request("acme"))
    sealed = tmp_path / "celery-task-meta-t-acme"
    sealed.write_bytes(store.get("celery/celery-task-meta-t-acme") or b"")

    alone = invoke(envelope, "decode", sealed, "--keyring", keyring_file)
    assert alone.exit_code == 2 and "4111" not in alone.output  # 2: what to pass is missing
    assert len(alone.stderr.splitlines()) == 1 and "t/acme/1" in alone.stderr
    assert "--tenant-keys" in alone.stderr

    opened = invoke(
        envelope, "decode", sealed, "--keyring", keyring_file, "--tenant-keys", keys_dir
    )
    assert opened.exit_code == 0, opened.output
    assert json.loads(opened.stdout)["result"] == {"card": "4111"}

    TenantKeyStore(DirectoryKeyObjects(keys_dir), cse.Keyring.from_file(keyring_file)).shred("acme")
    gone = invoke(envelope, "decode", sealed, "--keyring", keyring_file, "--tenant-keys", keys_dir)
    assert gone.exit_code == 1 and "shredded" in gone.stderr and "4111" not in gone.output


def test_lifecycle_apply_refuses_a_rule_that_would_expire_the_key_store(
    make_app: Any, store: S3Store
) -> None:
    """One untagged rule expires everything under the prefix, the key store with it: refused
    while tenants are in use; the tag-filtered rules (failure expiry) never match a key record."""
    app = _app(make_app, result_expires=86400)
    refused = invoke(envelope, "lifecycle", "apply", app=app)
    assert refused.exit_code == 2 and "tenant key store" in refused.output
    assert store.lifecycle_rules() == []
    tagged = invoke(envelope, "lifecycle", "apply", "--failure-days", "2", app=app)
    assert tagged.exit_code == 0, tagged.output
    plain = make_app(s3_base_path="celery/", result_expires=86400)  # no tenants: as before
    assert invoke(envelope, "lifecycle", "apply", app=plain).exit_code == 0
    backend_of(_app(make_app)).store_result("t", 1, "SUCCESS", request=_Request("acme"))
    assert invoke(envelope, "lifecycle", "apply", app=plain).exit_code == 2  # a record exists


def test_a_shred_the_server_partly_refuses_fails_and_a_rerun_finishes(
    make_app: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Object Lock or a policy refusing some deletions: ``shred`` exits 1 and says the tenant
    is NOT shredded (a log line names each refused copy), never "shredded"; the rerun, once the
    server allows it, deletes the rest."""
    app = _app(make_app)
    backend_of(app).store_result("a-0", 0, "SUCCESS", request=_Request("acme"))
    original = S3Store.destroy_versions

    def refusing_one(self: S3Store, prefix: str, *, keep: str | None = None) -> tuple[int, int]:
        real = self.client.delete_objects

        def delete_objects(**kwargs: Any) -> Any:
            first, *rest = kwargs["Delete"]["Objects"]
            response = real(**{**kwargs, "Delete": {**kwargs["Delete"], "Objects": rest}})
            refused = {"Key": first["Key"], "Code": "AccessDenied", "Message": "Object Lock"}
            return {**response, "Errors": [*response.get("Errors", []), refused]}

        monkeypatch.setattr(self.client, "delete_objects", delete_objects)
        try:
            return original(self, prefix, keep=keep)
        finally:
            monkeypatch.setattr(self.client, "delete_objects", real)

    monkeypatch.setattr(S3Store, "destroy_versions", refusing_one)
    failed = invoke(envelope, "shred", "--tenant", "acme", "--yes", app=app)
    assert failed.exit_code == 1, failed.output
    assert "NOT shredded" in failed.stderr and "run shred again" in failed.stderr
    assert "tenant acme: shredded" not in failed.output
    left = [info.key for info in store.list(f"celery/{KEY_STORE_DIR}acme/")]
    assert f"celery/{KEY_STORE_DIR}acme/1" in left

    monkeypatch.setattr(S3Store, "destroy_versions", original)
    finished = invoke(envelope, "shred", "--tenant", "acme", "--yes", app=app)
    assert finished.exit_code == 0, finished.output
    assert [info.key for info in store.list(f"celery/{KEY_STORE_DIR}acme/")] == [
        f"celery/{KEY_STORE_DIR}acme/shredded"
    ]


def test_a_scan_of_the_whole_bucket_lists_the_key_store_apart(make_app: Any) -> None:
    """The key store under celery/ met by a scan of the bucket's root: foreign records, never
    plaintext (exit 0, not 3)."""
    app = _app(make_app)
    backend_of(app).store_result("a-0", 0, "SUCCESS", request=_Request("acme"))
    scanned = invoke(envelope, "scan", "--prefix", "", "--json", app=app)
    assert scanned.exit_code == 0, scanned.output
    document = json.loads(scanned.output)
    assert document["plaintext"] == 0 and document["foreign"] == 1


def test_a_key_store_path_that_is_not_a_directory_fails_in_one_line(
    keyring_file: Path, tmp_path: Path
) -> None:
    sealed = tmp_path / "result.bin"
    keys_dir = tmp_path / "keys"
    keys = _store(DirectoryKeyObjects(keys_dir), cse.Keyring.from_file(keyring_file))
    sealed.write_bytes(_seal(keys, "acme", "celery-task-meta-x"))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a key store")
    for where in (a_file, tmp_path / "missing"):
        result = invoke(
            envelope, "decode", sealed, "--keyring", keyring_file, "--tenant-keys", where
        )
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and "is not a directory" in result.stderr
    with pytest.raises(KeyringError, match="tenant key store"):  # a worker's store, the same
        _open(
            _store(DirectoryKeyObjects(a_file), keys.keyring),
            "celery-task-meta-x",
            sealed.read_bytes(),
        )


def test_root_rotation_rewraps_every_good_record_past_a_bad_one(
    directory: DirectoryKeyObjects,
) -> None:
    """A malformed record (sorted between good ones) is counted as failed and logged; the
    records after it are rewrapped all the same."""
    keyring = cse.Keyring.generate("k1")
    keys = _store(directory, keyring)
    sealed = {tenant: _seal(keys, tenant, tenant) for tenant in ("aaa", "mmm", "zzz")}
    (directory.root / "mmm" / "1.json").write_bytes(b'{"format": "junk"}')
    rotated = with_active_k2(keyring)
    done = _store(directory, rotated).rewrap_root()
    assert (done.listed, done.rewrapped, done.failed) == (3, 2, 1)
    only_new_root = rotated.with_state("k1", KeyState.RETIRED)
    for tenant in ("aaa", "zzz"):
        assert _open(_store(directory, only_new_root), tenant, sealed[tenant]) == "v"


def test_a_tenant_whose_records_were_deleted_by_hand_can_still_be_shredded(
    make_app: Any, s3_endpoint: Any, s3_client: Any
) -> None:
    """On a versioned bucket a deleted record is a noncurrent version: the key survives, and
    ``shred`` must find and destroy it though the tenant no longer shows in a listing."""
    with fresh_bucket(s3_client, versioned=True) as name:
        app = _app(make_app, s3_bucket=name)
        backend_of(app).store_result("a-0", 0, "SUCCESS", request=_Request("acme"))
        s3_client.delete_object(Bucket=name, Key=f"celery/{KEY_STORE_DIR}acme/1")
        shredded = invoke(envelope, "shred", "--tenant", "acme", "--yes", app=app)
        assert shredded.exit_code == 0, shredded.output
        left = s3_client.list_object_versions(Bucket=name, Prefix=f"celery/{KEY_STORE_DIR}acme/")
        assert [v["Key"] for v in left.get("Versions", [])] == [
            f"celery/{KEY_STORE_DIR}acme/shredded"
        ]
        assert not left.get("DeleteMarkers")
        unknown = invoke(envelope, "shred", "--tenant", "nobody", "--yes", app=app)
        assert unknown.exit_code == 2  # a name with nothing stored is still a mistake


def test_rotating_a_tenant_reads_its_keys_once_not_once_per_result(
    make_app: Any, store: S3Store
) -> None:
    app = _app(make_app)
    backend = backend_of(app)
    for i in range(20):
        backend.store_result(f"acme-{i}", i, "SUCCESS", request=_Request("acme"))
    with count_requests(backend.store.client) as seen:
        done = invoke(envelope, "rotate", "--tenant", "acme", "--workers", "1", "--json", app=app)
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["rewrapped"] == 20
    key_store = [url for _, url in seen.sent if "envelope-tenant-keys" in url]
    assert len(key_store) <= 9, "\n".join(key_store)  # 167 before: about 8 per result
    assert backend_of(make_app(s3_base_path="celery/")).get_task_meta("acme-7")["result"] == 7
