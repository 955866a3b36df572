"""``keys``: create and edit keyring files without ever showing key material.

Every edit loads the keyring, makes the change on the immutable ``Keyring``, copies the previous
file to ``PATH.bak`` and then replaces ``PATH`` atomically (temp file, fsync, rename; mode 0600),
so a crash leaves either the old or the new keyring, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

import click

from ..errors import KeyringError
from ..kek import KEY_SIZE, KeyState, LocalKey, format_time
from ..keyring import Keyring
from ..ops.context import load_keyring_file
from ..private_file import write_private
from .options import CONTEXT_SETTINGS, Moment, warn
from .status import ConfigurationError
from .terminal import safe

_NUMBERED = re.compile(r"k(\d+)")


def next_key_id(keyring: Keyring) -> str:
    """``k<N+1>`` for the highest ``kN`` in the keyring (``k1`` when none is numbered)."""
    numbers = [int(m.group(1)) for e in keyring if (m := _NUMBERED.fullmatch(e.id))]
    n = max(numbers, default=0) + 1
    while f"k{n}" in keyring:
        n += 1
    return f"k{n}"


def _load(path: Path) -> Keyring:
    """Load for editing, settled (a staged key whose time has come is written back as the
    active key); the keyring's own warnings (file mode) become one-line notes."""
    try:
        return load_keyring_file(path, warn).settled()
    except KeyringError as exc:
        raise ConfigurationError(str(exc)) from None


def _backup(path: Path) -> Path:
    """Copy ``path`` to ``path.bak`` atomically, mode 0600 (it holds key material too)."""
    backup = path.with_name(path.name + ".bak")
    write_private(backup, path.read_bytes())
    return backup


def _save(path: Path, keyring: Keyring) -> None:
    """Back up the current file, then replace it; nothing is touched if the backup fails."""
    try:
        backup = _backup(path)
        keyring.to_file(path)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write keyring {str(path)!r}: {exc.strerror or exc}"
        ) from None
    click.echo(f"previous keyring kept as {backup}", err=True)


keyring_path = click.argument(
    "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PATH"
)


@click.group(context_settings=CONTEXT_SETTINGS)
def keys() -> None:
    """Create and edit keyring files (never prints key material). Every edit is atomic and keeps
    the previous file as PATH.bak.

    \b
    The rotation runbook:
    1. celery-s3-envelope keys add keys.json --activate-at +24h
       (a new key: opens results at once, seals new ones from that time on, in every process)
    2. Deploy keys.json to every worker and reader before that time, restarting each.
    3. After that time: celery -A proj envelope rotate
    4. celery -A proj envelope rotate --dry-run: it must report 0 rewrapped and 0 failed.
       With tenant keys (docs/tenants.md): also celery -A proj envelope rotate --root
       (rewraps the tenant KEK records, never a result).
    5. celery-s3-envelope keys retire keys.json OLD_ID
    6. Destroy OLD_ID in every copy of the keyring and its backups (crypto-shredding).

    \b
    Examples:
      celery-s3-envelope keys generate --out keys.json
      celery-s3-envelope keys add keys.json --activate-at 2026-12-02T00:00:00Z
      celery-s3-envelope keys list keys.json
    """


@keys.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--out",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Keyring file to create (refused if it exists).",
)
@click.option("--id", "kek_id", default="k1", show_default=True, help="Id of the first key.")
def generate(path: Path, kek_id: str) -> None:
    """Create a keyring holding one new random active key (file mode 0600).

    An existing file is never overwritten: it may hold the only key to existing results.

    \b
    Example:
      celery-s3-envelope keys generate --out /etc/myapp/result-keys.json
    """
    if path.exists() or path.is_symlink():
        raise ConfigurationError(
            f"{path} exists: refusing to overwrite a keyring (its keys may be the only way "
            "to read existing results); use `keys add` to add a key to it"
        )
    try:
        keyring = Keyring.generate(kek_id)
        keyring.to_file(path)
    except KeyringError as exc:
        raise ConfigurationError(str(exc)) from None
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write keyring {str(path)!r}: {exc.strerror or exc}"
        ) from None
    click.echo(f"created {path} with active key {kek_id}")


@keys.command(context_settings=CONTEXT_SETTINGS)
@keyring_path
@click.option("--id", "kek_id", help="Id of the new key (default: the next free kN).")
@click.option(
    "--activate-at",
    "activate_at",
    type=Moment(),
    metavar="TIME",
    help="Seal new results with it from TIME on, in every process that has this keyring "
    "(ISO 8601, UTC unless given, or +N[smhd] from now). Deploy the file everywhere before then.",
)
@click.option(
    "--activate",
    is_flag=True,
    help="Seal with it at once (only where every process already has it: see --activate-at).",
)
def add(path: Path, kek_id: str | None, activate_at: datetime | None, activate: bool) -> None:
    """Add a new random key to the keyring at PATH.

    Without an option the new key only opens results ('decrypt'). With --activate-at TIME it
    also becomes the sealing key at TIME, in every process that loaded this keyring, none
    restarted: deploy the file to every worker and reader before TIME, and no process ever meets
    a key it lacks (the runbook: `keys --help`). --activate switches at once, which is safe only
    when every process already has the new key.

    \b
    Examples:
      celery-s3-envelope keys add keys.json --activate-at +24h
      celery-s3-envelope keys add keys.json --id 2026-q1 --activate-at 2026-01-01T00:00:00Z
      celery-s3-envelope keys add keys.json
    """
    if activate and activate_at is not None:
        raise click.UsageError("--activate and --activate-at do not go together")
    keyring = _load(path)
    kek_id = kek_id or next_key_id(keyring)
    if kek_id in keyring:
        raise ConfigurationError(f"key {kek_id!r} is already in {safe(path)}")
    try:
        entry = LocalKey(kek_id, os.urandom(KEY_SIZE), KeyState.DECRYPT).scheduled(activate_at)
        edited = keyring.with_entry(entry, activate=activate)
    except KeyringError as exc:
        raise ConfigurationError(str(exc)) from None
    _save(path, edited)
    added = edited.get(kek_id)
    staged = f", active from {format_time(activate_at)}" if activate_at else ""
    click.echo(f"added key {safe(kek_id)} ({added.state}{staged}) to {safe(path)}")


@keys.command(context_settings=CONTEXT_SETTINGS)
@keyring_path
@click.argument("kek_id", metavar="ID")
@click.option(
    "--at",
    "at",
    type=Moment(),
    metavar="TIME",
    help="Stage it instead: it seals from TIME on in every process that has this keyring.",
)
def activate(path: Path, kek_id: str, at: datetime | None) -> None:
    """Make key ID the active key: new results are sealed with it.

    The previously active key moves to 'decrypt' and keeps opening older results. At once,
    every process that loads this file seals with ID: do it only when all of them have ID, or
    stage it with --at TIME and deploy the file before TIME (the runbook: `keys --help`).

    \b
    Examples:
      celery-s3-envelope keys activate keys.json k2 --at +24h
      celery-s3-envelope keys activate keys.json k2
    """
    keyring = _load(path)
    _require(keyring, kek_id, path)
    if keyring.active.id == kek_id:
        click.echo(f"key {safe(kek_id)} is already active in {safe(path)}; nothing changed")
        return
    if at is not None:
        if keyring.get(kek_id).state is not KeyState.DECRYPT:
            raise ConfigurationError(f"key {safe(kek_id)} is retired: it cannot be staged")
        _save(path, keyring.with_staged(kek_id, at))
        click.echo(f"staged key {safe(kek_id)} in {safe(path)}: active from {format_time(at)}")
        return
    previous = keyring.active.id
    _save(path, keyring.with_state(kek_id, KeyState.ACTIVE))
    click.echo(
        f"activated key {safe(kek_id)} in {safe(path)} (key {safe(previous)} now decrypts only)"
    )


@keys.command(context_settings=CONTEXT_SETTINGS)
@keyring_path
@click.argument("kek_id", metavar="ID")
def retire(path: Path, kek_id: str) -> None:
    """Retire key ID: results still under it are no longer opened.

    Re-wrap those results to the active key first. The key stays in the file (state
    'retired'), so the step can be undone by editing the file; deleting it from the file
    makes every result still under it unreadable. The active key cannot be retired.

    \b
    Example:
      celery-s3-envelope keys retire keys.json k1
    """
    keyring = _load(path)
    _require(keyring, kek_id, path)
    if keyring.active.id == kek_id:
        raise ConfigurationError(
            f"key {kek_id} is the active key: activate another key first (`keys add --activate`)"
        )
    if keyring.get(kek_id).state is KeyState.RETIRED:
        click.echo(f"key {kek_id} is already retired in {path}; nothing changed")
        return
    _save(path, keyring.with_state(kek_id, KeyState.RETIRED))
    click.echo(f"retired key {kek_id} in {path}")


@keys.command(name="list", context_settings=CONTEXT_SETTINGS)
@keyring_path
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {id, state, created}.")
def list_(path: Path, as_json: bool) -> None:
    """List the keys at PATH: id, state and creation time (never key material).

    \b
    Examples:
      celery-s3-envelope keys list keys.json
      celery-s3-envelope keys list --json keys.json | jq -r '.[] | select(.state == "active").id'
    """
    keyring = _load(path)
    described = [entry.describe() for entry in keyring]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    rows = [
        ("ID", "STATE", "CREATED"),
        *((safe(d["id"]), _state(d), d["created"]) for d in described),
    ]
    width_id = max(len(row[0]) for row in rows)
    width_state = max(len(row[1]) for row in rows)
    for row in rows:
        click.echo(f"{row[0].ljust(width_id)}  {row[1].ljust(width_state)}  {row[2]}".rstrip())


def _state(described: dict[str, str]) -> str:
    staged = described.get("active_from")
    return f"{described['state']} (active from {staged})" if staged else described["state"]


def _require(keyring: Keyring, kek_id: str, path: Path) -> None:
    if kek_id not in keyring:
        known = ", ".join(entry.id for entry in keyring)
        raise ConfigurationError(f"no key {kek_id!r} in {path} (it holds: {known})")
