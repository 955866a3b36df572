"""The package's layout holds: no import cycle, arrows one way, and the imports each entry point
may pull in (docs/architecture.md, DESIGN.md section 2).

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import``
anywhere in a module counts, inside functions and ``TYPE_CHECKING`` blocks too, so a cycle cannot
hide behind a deferred import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import celery_s3_envelope

PACKAGE = "celery_s3_envelope"
ROOT = Path(celery_s3_envelope.__file__).parent

LAYERS: dict[str, int] = {
    # the core: offline decode needs only these
    "errors": 0,
    "envelope": 1,
    "private_file": 1,
    "scrub": 1,
    "kek": 2,
    "kms": 3,
    "keyring": 4,
    "pipeline": 5,
    "": 6,  # the package itself: the offline API
    # storage and Celery
    "store": 5,
    "tenants": 6,  # tenant KEKs: their key store (S3 or files) and the selector
    "lifecycle": 5,
    "redact_text": 5,
    "settings": 7,
    "redact": 8,
    "messages": 8,
    "message_check": 8,  # the worker's side of the serializer
    "backend": 9,
    # the edges
    "ops": 10,
    "distributed": 11,
    "cli": 12,
    "celery_command": 13,
}
"""Each module's layer (a subpackage's modules share its layer): an import goes to the same
layer or a lower one, never up: ``cli -> ops -> backend/settings -> pipeline/store -> keyring
-> kek/kms -> envelope``."""

CORE = ("errors", "envelope", "private_file", "scrub", "kek", "kms", "keyring", "pipeline", "")
"""Imported by ``import celery_s3_envelope`` and by offline decode."""
THIRD_PARTY_SERVICES = ("celery", "kombu", "boto3", "botocore", "click")


def module_name(path: Path) -> str:
    """``ops/scan.py`` -> ``ops.scan``; ``cli/__init__.py`` -> ``cli``; the root -> ``''``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports(name: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file: package modules
    without the ``celery_s3_envelope.`` prefix, others by their top-level name (``botocore``)."""
    tree = ast.parse(path.read_text(), str(path))
    known = modules()
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _local(alias.name), node.lineno, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if name else []
                base = parts if path.name == "__init__.py" else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = _local(node.module or "")
            for alias in node.names:  # `from . import cli` names a module, not an attribute
                sub = f"{target}.{alias.name}".strip(".")
                yield (sub if sub in known else target), node.lineno, id(node) in top_level


def _local(dotted: str) -> str:
    if dotted == PACKAGE:
        return ""
    if dotted.startswith(PACKAGE + "."):
        return dotted[len(PACKAGE) + 1 :]
    return "!" + dotted.split(".")[0]  # a third-party or standard-library module


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {target for target, _, _ in imports(name, path) if target in known}
        for name, path in known.items()
    }


def layer(name: str) -> int:
    return LAYERS[name] if name in LAYERS else LAYERS[name.split(".")[0]]


def test_the_graph_sees_every_kind_of_import() -> None:
    """The reader itself: relative, absolute, deferred and ``from . import module`` imports."""
    edges = graph()
    assert "keyring" in edges["kms"] or "kek" in edges["kms"]
    assert "ops.scan" in edges["cli.sources"]  # imported inside a function
    assert "cli" in edges["celery_command"]
    assert "ops.context" in edges["distributed"]
    assert "" in edges["cli"]  # `from .. import __version__`


def test_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(m or PACKAGE for m in cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_every_module_has_a_layer_and_imports_point_down() -> None:
    upward = []
    for name, path in modules().items():
        for target, line, _ in imports(name, path):
            if target.startswith("!"):
                continue
            if layer(target) > layer(name):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {name or PACKAGE} -> {target}")
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("ops", ("cli", "!click")),  # the command line imports the operations, never the reverse
        ("backend", ("cli", "ops", "!click")),
        ("settings", ("cli", "ops", "backend", "!click")),
        ("distributed", ("cli", "!click")),  # what workers include
    ],
)
def test_layers(importer: str, forbidden: tuple[str, ...]) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for name, path in modules().items()
        if name == importer or name.startswith(importer + ".")
        for target, line, _ in imports(name, path)
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert not found, f"{importer} must not import {forbidden}:\n" + "\n".join(found)


@pytest.mark.parametrize("core", CORE)
def test_the_core_imports_neither_celery_nor_boto3(core: str) -> None:
    """The envelope, pipeline and key modules: no Celery, kombu, boto3, botocore or click.
    ``kms`` alone builds a boto3 client, and imports boto3 only inside the function that does."""
    path = modules()[core]
    found = [
        f"{path.relative_to(ROOT)}:{line}: {target[1:]}"
        for target, line, module_level in imports(core, path)
        if target[1:] in THIRD_PARTY_SERVICES and (module_level or core != "kms")
    ]
    assert not found, "\n".join(found)


def fresh_modules(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    script = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def test_the_worker_side_task_module_does_not_import_click() -> None:
    """Workers include ``celery_s3_envelope.distributed``: it brings in no command-line module
    and no click module beyond what Celery itself loads (``celery.exceptions`` imports click's
    exceptions, so a worker always has that much of click)."""
    loaded = fresh_modules("import celery_s3_envelope.distributed")
    assert "celery_s3_envelope.distributed" in loaded and "celery_s3_envelope.ops.runs" in loaded
    assert not {
        m
        for m in loaded
        if m.startswith(("celery_s3_envelope.cli", "celery_s3_envelope.celery_command"))
    }
    celery_alone = fresh_modules("import celery, celery.app.task, boto3")
    clicks = {m for m in loaded if m.split(".")[0] == "click"}
    assert clicks <= celery_alone, sorted(clicks - celery_alone)


def test_the_offline_api_imports_neither_celery_nor_boto3() -> None:
    loaded = fresh_modules("import celery_s3_envelope")
    assert "celery_s3_envelope.keyring" in loaded
    assert not {"celery", "kombu", "boto3", "botocore", "click"} & loaded


def test_the_offline_api_works_in_a_fresh_interpreter() -> None:
    """README's "Python API" section, as written there."""
    loaded = fresh_modules(
        "import celery_s3_envelope as cse\n"
        "keyring = cse.Keyring.generate()\n"
        "envelope = cse.seal('{\"status\": \"SUCCESS\"}', key='celery-task-meta-1', "
        "keyring=keyring)\n"
        "assert cse.unseal(envelope, keyring=keyring, key='celery-task-meta-1') == "
        '\'{"status": "SUCCESS"}\'\n'
        "assert cse.inspect(envelope).kek_id == 'k1'"
    )
    assert not {"celery", "boto3", "botocore"} & loaded


def test_the_kombu_serializer_entry_point_is_light_and_registered() -> None:
    """kombu imports the ``kombu.serializers`` entry point's module while ``kombu.serialization``
    is itself being imported (in the middle of Celery's own first import of kombu): that module
    must import no Celery (the import would be circular and break kombu for every user) and no
    boto3 (every kombu user would pay for it). And the serializer must be registered by the entry
    point alone, in a process that imports nothing of ours, with Celery then imported whole."""
    path = modules()["messages"]
    found = [
        f"{path.relative_to(ROOT)}:{line}: {target[1:]}"
        for target, line, module_level in imports("messages", path)
        if module_level and target[1:] in THIRD_PARTY_SERVICES
    ]
    assert not found, "\n".join(found)
    loaded = fresh_modules("import kombu.serialization")
    assert "celery_s3_envelope.messages" in loaded
    assert not {"boto3", "botocore", "click"} & loaded
    script = (
        "import kombu.serialization as s\n"
        "from celery import Celery, signals\n"
        "Celery('x', set_as_current=False)\n"
        "print(s.registry.name_to_type['envelope'])\n"
        "receivers = signals.before_task_publish.receivers\n"
        "print(any('celery_s3_envelope' in str(r) for r, _ in receivers))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["application/x-celery-s3-envelope", "True"]
