# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs driftlab, runs the main job
#   make test   the same set-up, then the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python experiments/drift_sim.py --out runs/demo

test: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
