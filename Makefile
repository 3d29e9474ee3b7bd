# Sealed Notes: `make dev` runs the whole stack locally, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit bench drills clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/sealednotes dev

lint: $(STAMP)
	$(BIN)/ruff check crypto service tests bench deploy
	$(BIN)/ruff format --check crypto service tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Ops drills (root, Debian packages from .ci/run): the image builds and runs, nginx
# in front survives slow clients, failover across network namespaces. ~15 min.
drills: $(STAMP)
	$(BIN)/pytest -o addopts="-ra --strict-markers" -p no:cacheprovider -s tests/drills $(DRILL_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .sealednotes-dev .pytest_cache .mypy_cache .ruff_cache
