# The two commands a fresh machine needs: `make demo` (main job) and `make test` (tests).
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.ready: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

.PHONY: setup demo test test-slow lint
setup: $(VENV)/.ready

demo: $(VENV)/.ready
	$(VENV)/bin/robustact demo --out runs/demo

# The fast default: everything but the tests marked slow (minutes each: the demo over seeds,
# its bit-for-bit rerun, the scripts' quick runs).
test: $(VENV)/.ready
	$(VENV)/bin/ruff check src tests benchmarks experiments scripts
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.ready
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check src tests benchmarks experiments scripts
