#!/usr/bin/env bash
# The compatibility matrix (`make test-compat`): the suite's backend, worker and command-line tests
# once per entry of compat/, each in a virtual environment of its own where that entry's pins hold.
#
#   scripts/compat.sh              every entry: compat/celery-5.*.txt, then compat/lowest.txt
#   scripts/compat.sh celery-5.5   the named entries only
#
# compat/celery-5.N.txt pins one Celery minor (its latest patch) and the kombu of its time, and
# leaves everything else to the resolver (the newest); compat/lowest.txt pins every runtime
# dependency to the floor pyproject.toml declares, and this script fails when the two disagree.
# The environments are kept under $COMPAT_VENVS (default .venvs/, ignored by git) and rebuilt only
# when pyproject.toml's dependencies, the entry's pins, the install recipe or $PYTHON change; the
# project is installed editable, with its `test` extra. Every entry runs even when one fails; a table of all of them closes the
# run, and the exit status is 1 when any entry failed (to install or its tests).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENVS=${COMPAT_VENVS:-.venvs}
# The Celery-facing tests: the backend's contract, the real worker (prefork, threads, solo), the
# redaction hooks inside Celery, both command lines (`celery-s3-envelope`, `celery envelope`), the
# envelope serializer (kombu's registry, Celery's publish signals and consumer), and tenant keys.
TESTS=(
    tests/test_backend.py tests/test_backend_config.py tests/test_backend_expiry.py
    tests/test_backend_incr.py tests/test_lifecycle.py
    tests/test_worker_round_trip.py tests/test_redact_worker.py tests/test_redact.py
    tests/test_cli.py tests/test_cli_keys.py tests/test_cli_ops.py tests/test_cli_s3.py
    tests/test_cli_demo.py
    tests/test_messages.py tests/test_messages_worker.py tests/test_tenants.py
)

if [ "$#" -gt 0 ]; then
    entries=("$@")
else
    entries=()
    for file in compat/celery-*.txt compat/lowest.txt; do
        name=${file#compat/}
        entries+=("${name%.txt}")
    done
fi

# compat/lowest.txt must pin each runtime dependency to exactly the floor pyproject.toml declares.
"$PYTHON" - <<'EOF'
import re, sys, tomllib
from pathlib import Path

declared = {}
for spec in tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]:
    found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", spec.strip())
    if not found:
        sys.exit(f"compat: cannot read a floor from the dependency {spec!r}")
    declared[found[1].lower()] = found[2]
pinned = {}
for line in Path("compat/lowest.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        pinned[name.strip().lower()] = version.strip()
def release(text):  # "42" and "42.0.0" are one release
    parts = [int(part) for part in text.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return parts

wrong = [f"{n}: declared >={v}, lowest.txt has {pinned.get(n)}" for n, v in declared.items()
         if n not in pinned or release(pinned[n]) != release(v)]
if wrong:
    sys.exit("compat: compat/lowest.txt does not pin the declared floors:\n  " + "\n  ".join(wrong))
EOF

RECIPE="venv; pip install --upgrade pip; pip install --constraint PINS -e .[test]"
# ^ how install() builds an environment: change it with install(), and every one is rebuilt.
install() {  # install <entry> <venv>: a fresh environment where the entry's pins hold
    local pins=compat/$1.txt venv=$2
    # Called as an `if` condition, where `set -e` does not apply: each step returns on failure.
    rm -rf "$venv" || return 1
    "$PYTHON" -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --upgrade pip || return 1
    "$venv/bin/python" -m pip install --quiet --constraint "$pins" -e '.[test]' || return 1
    "$venv/bin/python" -m pip check || return 1
    # A constraint only limits what is installed: check that each pinned package is there at its pin.
    "$venv/bin/python" - "$pins" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

wrong = []
for line in Path(sys.argv[1]).read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, pin = line.partition("==")
        try:
            found = version(name.strip())
        except PackageNotFoundError:
            found = "not installed"
        if found != pin.strip():
            wrong.append(f"{name.strip()}: {found}, pinned {pin.strip()}")
if wrong:
    sys.exit(f"compat: {sys.argv[1]} does not hold: " + "; ".join(wrong))
EOF
}

# What an environment depends on in pyproject.toml (not its description, classifiers or URLs).
DEPENDENCIES=$("$PYTHON" -c '
import json, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
keys = ("name", "requires-python", "dependencies", "optional-dependencies", "scripts", "entry-points")
print(json.dumps({key: project.get(key) for key in keys}, sort_keys=True))')

results=()
status=0
for entry in "${entries[@]}"; do
    pins=compat/$entry.txt
    if [ ! -f "$pins" ]; then
        echo "compat: no such entry: $pins" >&2
        exit 2
    fi
    venv=$VENVS/compat-$entry
    want=$( (echo "$DEPENDENCIES"; cat "$pins"; echo "$RECIPE"; "$PYTHON" -VV) | sha256sum | cut -d' ' -f1)
    started=$SECONDS
    echo "=== compat $entry ($pins)"
    if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$want" ]; then
        if ! install "$entry" "$venv"; then
            results+=("$entry: FAILED to install ($((SECONDS - started)) s)")
            status=1
            continue
        fi
        echo "$want" >"$venv/.installed"
        echo "compat: $venv built in $((SECONDS - started)) s"
    else
        echo "compat: $venv is up to date"
    fi
    versions=$("$venv/bin/python" -c '
import platform
from importlib.metadata import version
names = ("celery", "kombu", "billiard", "boto3", "botocore", "cryptography", "zstandard", "click")
print(f"Python {platform.python_version()}:", ", ".join(f"{n} {version(n)}" for n in names))')
    echo "$versions"
    log=$(mktemp "${TMPDIR:-/tmp}/compat-$entry.XXXXXX")
    if "$venv/bin/python" -m pytest -n 2 -m "not slow and not ceph" -p no:cacheprovider \
        "${TESTS[@]}" 2>&1 | tee "$log"; then
        outcome=passed
    else
        outcome=FAILED
        status=1
    fi
    summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 | tr -d '=' |
        sed 's/^ *//; s/ *$//')
    rm -f "$log"
    results+=("$entry: $outcome, $summary ($((SECONDS - started)) s in all); $versions")
done

echo "=== compatibility matrix"
printf '%s\n' "${results[@]}"
exit "$status"
