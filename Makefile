# Two commands a new user needs: `make run` and `make test`. Only Python 3.11+ is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# The example distributor.yaml reads the sample site here; change both together.
SAMPLE_PORT = 8765
# ONCE=1 stops after the first pass instead of keeping the scheduler running.
RUN_FLAGS = $(if $(ONCE),--once,--now)

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m sample.demo --port $(SAMPLE_PORT) -- $(RUN_FLAGS)

# The email layout tests drive Debian's Chromium (tests/test_email_browser.py): installed here
# when it is missing, with sudo unless make runs as root.
CHROMIUM ?= /usr/bin/chromium
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	  || ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check distributor tests sample bench
	$(BIN)/ruff format --check distributor tests sample bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Benchmarks, one module each in bench/ (see docs/benchmarks.md); each exits non-zero when it
# misses its target. BENCH_FLAGS goes to every one, e.g. `make bench BENCH_FLAGS="--seed 2"`.
BENCHES = bench.breaking_news bench.websub_push bench.ingest bench.email_render bench.email_send \
          bench.workers
# The email delivery benchmarks send to Postfix's smtp-sink (Debian's postfix package, which
# starts no mail server where there is no init system): installed here when it is missing.
SMTP_SINK ?= /usr/sbin/smtp-sink
$(SMTP_SINK):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postfix \
	  || ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postfix)

bench: $(STAMP) $(SMTP_SINK)
	@for module in $(BENCHES); do $(BIN)/python -m $$module $(BENCH_FLAGS) || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
