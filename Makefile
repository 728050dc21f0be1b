# flowhost: `make serve` and `make test` work on a fresh clone (they create .venv as needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
FLOWS ?= examples/flows
export FLOWHOST_DEFAULT_APP ?= echo

.PHONY: serve test lint format bench soak install lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# constraints.txt: the versions the test suite last passed with (`make lock` renews it), so a
# fresh clone installs what CI ran, not whatever was released since
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
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

lock:  # the newest versions pyproject.toml admits, resolved in a scratch venv; then run `make test`
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install -q --upgrade pip
	$(VENV)-lock/bin/pip install -q -e '.[dev]'
	{ echo "# written by \`make lock\`: pins for \`pip install -c constraints.txt\` (make install, deploy/Dockerfile)"; \
	  $(VENV)-lock/bin/pip freeze --exclude-editable | LC_ALL=C sort -f; } > constraints.txt
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) .venv-promptflow .flowhost .pytest_cache .mypy_cache .ruff_cache
