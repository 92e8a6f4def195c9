# Shoal: `make run` starts a local cluster, `make test` runs the suite. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Rust crate (native/) built into shoal._native; rebuilt in place when its sources change.
NATIVE := $(VENV)/.native
NATIVE_SRC := native/Cargo.toml native/Cargo.lock $(shell find native/src -name '*.rs' -o -name '*.binpb')
CARGO := cargo
# pyo3's build and `cargo test` use the project's interpreter.
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: run test check proto proto-check lint typecheck rust-check rust-test deploy-check bench clean

# `pip install -e` builds the native module too (maturin is the build backend).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $(NATIVE)

$(NATIVE): $(STAMP) $(NATIVE_SRC)
	$(BIN)/maturin develop --release --skip-install -q
	touch $(NATIVE)

$(VENV): $(NATIVE)

run: $(NATIVE)
	$(BIN)/shoal up --demo

test: $(NATIVE) rust-test
	$(BIN)/python -m pytest -q tests

rust-test: $(STAMP)
	cd native && $(CARGO) test --quiet

rust-check: $(STAMP)
	cd native && $(CARGO) fmt --check
	cd native && $(CARGO) clippy --quiet --all-targets -- -D warnings

proto: $(NATIVE)
	$(BIN)/python -m shoal.protogen

proto-check: $(NATIVE)
	$(BIN)/python -m shoal.protogen --check

lint: $(NATIVE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(NATIVE)
	$(BIN)/mypy

# deploy/: both overlays rendered and validated against the pinned Kubernetes, yamllint,
# hadolint (deploy/check.py).
deploy-check: $(STAMP)
	$(BIN)/python deploy/check.py

check: lint typecheck proto-check rust-check deploy-check

bench: $(NATIVE)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache native/target shoal/_native*.so
