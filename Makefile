# flowhost: `make serve` and `make test` work on a fresh clone (they create .venv as needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
FLOWS ?= examples/flows
export FLOWHOST_DEFAULT_APP ?= echo

.PHONY: serve test lint format bench soak install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/flowhost serve $(FLOWS)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

soak: $(STAMP)  # 30 minutes at 200 concurrent streams: RSS and open fds must stay flat
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .venv-promptflow .flowhost .pytest_cache .mypy_cache .ruff_cache
