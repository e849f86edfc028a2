# Two commands a new user needs: `make run` and `make test`. Only Python 3.11+ is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
SAMPLE_PORT ?= 8765
# ONCE=1 stops after the first pass instead of keeping the scheduler running.
RUN_FLAGS = $(if $(ONCE),--once,--now)

.PHONY: run test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m sample.demo --port $(SAMPLE_PORT) -- $(RUN_FLAGS)

test: $(STAMP)
	$(BIN)/ruff check distributor tests sample
	$(BIN)/ruff format --check distributor tests sample
	$(BIN)/mypy
	$(BIN)/python -m pytest


clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
