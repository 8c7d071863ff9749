# `make dev` (a whole fleet on this machine), `make test` (every gate), `make bench` (numbers).
# Both create .venv and install fleetbus into it if needed.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PYTEST_ARGS ?=
SEEDS  ?= 20
STEPS  ?= 80

.PHONY: dev test lint format types contracts pytest soak bench schemas clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,k8s,mqtt]'
	@touch $(STAMP)

dev: $(STAMP)
	@echo "fleetbus is $(VENV)/bin/fleetbus; in other terminals: export PATH=$$PWD/$(VENV)/bin:\$$PATH"
	@$(VENV)/bin/fleetbus dev up $(ARGS)

test: lint types contracts pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

types: $(STAMP)
	$(VENV)/bin/mypy schemas fleetbus hub regional edge benchmarks

contracts: $(STAMP)
	$(VENV)/bin/lint-imports

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The consistency suite, long: SEEDS random fault schedules of STEPS steps each (tests/consistency.py).
soak: $(STAMP)
	$(PY) -m tests.consistency --seeds $(SEEDS) --steps $(STEPS)

# Benchmarks (not tests: numbers, never a gate), appended to benchmarks/RESULTS.md; ~13 min.
bench: $(STAMP)
	$(PY) benchmarks/codec.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/footprint.py
	$(PY) benchmarks/fanout.py
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/heal.py

schemas: $(STAMP)
	$(VENV)/bin/fleetbus schema export docs/schemas
	$(PY) -m hub.openapi docs/api/openapi.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis test-output
