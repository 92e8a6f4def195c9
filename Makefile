# Shoal: `make run` starts a local cluster, `make test` runs the suite. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check proto proto-check lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(VENV): $(STAMP)

run: $(STAMP)
	$(BIN)/shoal up --demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

proto: $(STAMP)
	$(BIN)/python -m shoal.protogen

proto-check: $(STAMP)
	$(BIN)/python -m shoal.protogen --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck proto-check

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
