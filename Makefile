# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Each does its own set-up: a virtualenv in .venv with the pinned CPU torch installed first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DEMO_SPACE ?= search_spaces/digits-table1-quick.yaml
DEMO_STUDY ?= digits-table1-quick
STORAGE ?= sqlite:///proxstudy.db

.PHONY: setup system-test-deps demo lint test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# The test suite drives a real headless Chromium and parses docker-compose.yml with Debian's
# docker-compose; both come from Debian's packages when missing.
system-test-deps:
	bash scripts/install_chromium.sh
	bash scripts/install_docker_compose.sh

demo: setup
	$(BIN)/proxstudy run $(DEMO_SPACE) --storage $(STORAGE) --max-concurrent 2
	$(BIN)/proxstudy report $(DEMO_STUDY) --storage $(STORAGE) --out report.html
	@echo
	@echo "Report (self-contained, open in a browser): $$(pwd)/report.html"
	@echo "Live dashboard:  $(BIN)/proxstudy dashboard --storage $(STORAGE)   -> http://127.0.0.1:8050"

# ruff (lint and import order) on the whole tree, mypy on the installed packages (see
# scripts/typecheck.sh); settings in pyproject.toml. Both run; either failing fails.
lint: setup
	@status=0; $(BIN)/ruff check . || status=1; bash scripts/typecheck.sh || status=1; exit $$status

test: setup system-test-deps lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=600

bench: setup
	$(BIN)/python benchmarks/proxprop_step.py
	$(BIN)/python benchmarks/sweep_overhead.py
	$(BIN)/python benchmarks/dashboard_load.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache report.html build
