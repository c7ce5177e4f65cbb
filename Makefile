# The two commands of the README, each doing its own set-up on a fresh machine:
#   make serve   start a tidings node on the embedded default (memory broker, 127.0.0.1:8000)
#   make test    install everything and run the whole test suite (lint, types, tests)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest bench clean js-pack

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/tidings serve

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite on the default (native) server, then every suite that starts a server
# process again on uvicorn: both backends pass the same tests.
pytest: $(STAMP)
	$(BIN)/pytest
	TIDINGS_TEST_SERVER_BACKEND=uvicorn $(BIN)/pytest tests/e2e tests/client tests/browser tests/chaos

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/compare.py

# The JavaScript client as an npm tarball (it is not on the npm registry):
# dist/tidings-client-<version>.tgz, for `npm install ./dist/tidings-client-<version>.tgz`.
js-pack:
	mkdir -p dist
	cd clients/js && npm pack --pack-destination ../../dist

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
