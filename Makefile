# Two entry points; both build .venv from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test test-slow lint clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/twinnode demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Import contracts (pyproject's [tool.importlinter]), types (mypy), module and function sizes.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) scripts/check_sizes.py

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
