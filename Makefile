# Sealed Notes: `make dev` runs the whole stack locally, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test test-fast lint typecheck contracts unit bench drills lock clean

# Every package at the version in requirements.lock (make lock to move them).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

lock:
	$(PYTHON) -m venv /tmp/sealednotes-lock && /tmp/sealednotes-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions of every package make test, make dev, CI and the image install"; \
	  echo "# (pip constraints: pip install -c requirements.lock ...). Regenerate with make lock."; \
	  /tmp/sealednotes-lock/bin/pip freeze --exclude-editable | grep -v '^sealednotes'; } > requirements.lock
	rm -rf /tmp/sealednotes-lock

dev: $(STAMP)
	$(BIN)/sealednotes dev

lint: $(STAMP)
	$(BIN)/ruff check crypto service tests bench deploy
	$(BIN)/ruff format --check crypto service tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy

# The import contracts between layers (pyproject.toml, [tool.importlinter]).
contracts: $(STAMP)
	$(BIN)/lint-imports

# Two pytest workers (each with its own OpenBao and database; a file's tests stay on
# one worker), then the schemathesis fuzzing on its own: it expands its cases at run
# time, which pytest-xdist would collapse into one.
PYTEST_WORKERS ?= 2
test: $(STAMP) lint typecheck contracts
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --ignore=tests/fuzz $(PYTEST_ARGS)
	$(BIN)/pytest -q tests/fuzz $(PYTEST_ARGS)

# The unit layer only (crypto, the gate and use cases on in-memory fakes): seconds.
test-fast unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Ops drills (root, Debian packages from .ci/run): the image builds and runs, nginx
# in front survives slow clients, failover across network namespaces. ~15 min.
drills: $(STAMP)
	$(BIN)/pytest -o addopts="-ra --strict-markers" -p no:cacheprovider -s tests/drills $(DRILL_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .sealednotes-dev .pytest_cache .mypy_cache .ruff_cache
