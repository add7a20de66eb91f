# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/sst2_local.yaml
ARGS ?=

.PHONY: install run test test-fast test-slow lint docs bench clean

# Re-install only when pyproject.toml changes.
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/pipeline run --config $(CONFIG) $(ARGS)

lint: install
	$(BIN)/ruff check pipeline tests benchmarks

# The full suite, as CI runs it: the unit tier on both cores, then the integration tier (servers,
# workers, kill -9) alone, so its timings and ports are not contended.
test: install lint docs
	$(BIN)/pytest -q -n 2 tests/unit
	$(BIN)/pytest -q tests/integration

# The unit tier, for the edit loop: no servers, workers, sweeps or kill -9; on two processes.
test-fast: install
	$(BIN)/pytest -q -n 2 -m 'not slow and not integration' tests/unit

# The documentation site, built strictly: every link and anchor must resolve.
docs: install
	$(BIN)/mkdocs build --strict --quiet --site-dir site

# The slow tests train on the real corpora in ../shared/data.
test-slow: install
	$(BIN)/pytest -q -m slow

# Input-pipeline throughput on SST-2 (needs ../shared/data or --data PATH); prints a table.
bench: install
	$(BIN)/python benchmarks/throughput.py $(ARGS)

# Only what the pipeline and its tools generated: data/ also holds the shipped corpora and the
# TFDS downloads a user placed in data/tfds/downloads/manual/, which stay.
clean:
	rm -rf $(VENV) site data/work models mlruns mlartifacts mlflow.db mlflow.db.lock optuna.db .pytest_cache .ruff_cache
