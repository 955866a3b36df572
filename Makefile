# The README's two commands: `make demo` and `make test`. Everything the project needs is
# installed here, into .venv, from the project's own pyproject.toml.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck vectors clean

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

test: lint typecheck
	$(PY) -m pytest -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/celery-s3-envelope demo

vectors: $(STAMP)
	$(PY) scripts/make_vectors.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make test-rgw`: the S3-facing tests (pytest marker `s3`) against a real S3 server. With
# S3_TEST_ENDPOINT_URL, S3_TEST_ACCESS_KEY_ID and S3_TEST_SECRET_ACCESS_KEY (S3_TEST_REGION) set,
# against that server, starting nothing; otherwise against a throwaway Ceph RADOS Gateway on
# 127.0.0.1 from scripts/ceph-rgw.sh (as root it installs Debian's Ceph packages when missing),
# stopped and removed on every exit path. Exits with pytest's status. Until test modules carry the
# marker, S3_TEST_MODULES is run instead.
S3_TEST_MODULES = $(wildcard tests/test_store.py tests/test_backend*.py tests/test_rotation.py \
	tests/test_audit.py tests/test_cli_s3.py tests/test_cli_ops.py tests/test_e2e_worker.py) \
	tests/test_rgw_script.py

.PHONY: test-rgw
test-rgw: $(STAMP)
	@set -u; \
	if [ -n "$${S3_TEST_ENDPOINT_URL:-}" ]; then \
		echo "test-rgw: the S3 server named by S3_TEST_ENDPOINT_URL: $$S3_TEST_ENDPOINT_URL"; \
	else \
		rgw_dir=$$(mktemp -d "$${TMPDIR:-/tmp}/ceph-rgw.XXXXXX") || exit 1; \
		trap 'scripts/ceph-rgw.sh down "$$rgw_dir"' EXIT; \
		trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM; \
		scripts/ceph-rgw.sh up "$$rgw_dir" || exit 1; \
		. "$$rgw_dir/env"; \
	fi; \
	if $(PY) -m pytest -q -p no:cacheprovider --collect-only -m s3 \
		--ignore=tests/test_rgw_script.py >/dev/null 2>&1; \
	then selection="-m s3"; else selection="$(S3_TEST_MODULES)"; fi; \
	$(PY) -m pytest $$selection; \
	exit $$?
