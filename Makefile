# One command surface for people, CI and the README.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev run test lint bench clean compose-test

# Running the system needs the runtime only; tests, lint and benchmarks add the dev extras
# (Playwright, mypy, ruff, DuckDB, ...). Measured on a fresh venv: 738 MB, and 1,086 MB
# with the extras.
install: $(STAMP)

install-dev: $(DEV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

run: install
	$(VENV)/bin/mlpulse up

test: install-dev
	$(PY) -m pytest

lint: install-dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: install-dev
	$(PY) bench/pipeline.py --out docs/benchmarks-latest.md
	$(PY) bench/fanout.py --out docs/benchmarks-latest-fanout.md
	$(PY) bench/batch_score.py --out docs/benchmarks-latest-batch.md

# The real Dockerfile and docker-compose.yml, built and run under podman with checks
# (deploy/podman/README.md). Needs root; installs podman and builds stand-in base images
# the first time.
compose-test:
	bash deploy/podman/compose-test.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The fault suite at soak size: more rounds and events than CI runs (see docs/reliability.md).
.PHONY: soak
soak: install-dev
	MLPULSE_SOAK=1 $(PY) -m pytest tests/faults --timeout 3600
