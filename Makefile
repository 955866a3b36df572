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
	$(PY) scripts/demo.py

vectors: $(STAMP)
	$(PY) scripts/make_vectors.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
