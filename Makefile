# The two commands a new user runs (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test check lint system-deps bench clean

## Install everything and run the demo ward on the embedded mTLS broker, ending with the summary.
demo: $(VENV)/.installed
	$(BIN)/fleetsim run scenarios/ward.toml --pki pki --out results

## Install what the tests need (Mosquitto from Debian's packages included) and run the whole suite.
test: system-deps $(VENV)/.installed-test lint
	$(BIN)/pytest

## The fast tier, for every edit: lint and the tests that need no broker, PKI or subprocess (under a minute).
check: $(VENV)/.installed-test lint
	FLEETSIM_FAST_TIER=1 $(BIN)/pytest -m "not integration" -q --timeout 20

lint: $(VENV)/.installed-test
	$(BIN)/ruff check fleetsim tests benchmarks
	$(BIN)/mypy fleetsim tests benchmarks

system-deps:
	@scripts/install-system-deps.sh

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_all.py

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[fast]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[fast,test]'
	@touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
