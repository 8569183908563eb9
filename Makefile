# The two commands a fresh machine needs: `make demo` (main job) and `make test` (tests).
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.ready: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

.PHONY: setup demo test lint
setup: $(VENV)/.ready

demo: $(VENV)/.ready
	$(VENV)/bin/robustact demo --out runs/demo

test: $(VENV)/.ready
	$(VENV)/bin/ruff check src tests benchmarks experiments scripts
	$(PY) -m pytest -q

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check src tests benchmarks experiments scripts
