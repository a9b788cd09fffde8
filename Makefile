# Two entry points; both build .venv from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test test-slow lint clean-venv mst-venv

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
	rm -rf $(VENV) $(MST_VENV)

# The side venv for the fidelity study's MST baseline (twinnode/lab/mst.py runs it as a
# subprocess): smartnoise-synth needs a newer jax/numpy than d3p pins. --no-deps skips
# opacus/torch (~6 GB), which only its GAN synthesisers use.
MST_VENV := .venv-mst
MST_REQ := scripts/mst-requirements.txt

mst-venv: $(MST_VENV)/.installed

$(MST_VENV)/.installed: $(MST_REQ)
	@test -x $(MST_VENV)/bin/python || $(PYTHON) -m venv $(MST_VENV)
	$(MST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MST_VENV)/bin/python -m pip install --quiet --no-deps -r $(MST_REQ)
	$(MST_VENV)/bin/python -c "import snsynth, mbi"
	@touch $@
