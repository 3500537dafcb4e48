# One command surface for people, CI and the README.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(VENV)/bin/mlpulse up

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: install
	$(PY) bench/pipeline.py --out docs/benchmarks-latest.md
	$(PY) bench/fanout.py --out docs/benchmarks-latest-fanout.md
	$(PY) bench/batch_score.py --out docs/benchmarks-latest-batch.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The fault suite at soak size: more rounds and events than CI runs (see docs/reliability.md).
.PHONY: soak
soak: install
	MLPULSE_SOAK=1 $(PY) -m pytest tests/faults --timeout 3600
