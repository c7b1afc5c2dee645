# The README's two commands:
#   make demo   create .venv, install, open JupyterLab on notebooks/ with the sandbox inside
#   make test   create .venv, install the test tools, lint, type-check and run every test
#
# Both are idempotent: the installs are recorded in stamp files inside .venv and redone
# only when pyproject.toml changes. Variables: PYTHON (interpreter creating .venv),
# PORT (JupyterLab, default 8888; LAB_PORT is the older name),
# SIZE (sandbox size, default "default"), PYTEST_ARGS (extra pytest arguments).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8888
LAB_PORT ?= $(PORT)
SIZE ?= default
PYTEST_ARGS ?=
# Jupyter refuses to run as root unless told (containers, CI machines)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help demo test

help:
	@echo "make demo   JupyterLab on http://127.0.0.1:$(LAB_PORT)/ serving the imaging sandbox"
	@echo "make test   lint, type-check and run the whole test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The JupyterLab extension (extension/), built when npm is here (Node.js >= 20) from its
# lock file; the wheel carries the build (extension/hatch_build.py), so a rebuild redoes
# the install below. Without Node.js the Python package installs and works without it.
EXTENSION_SOURCES := $(wildcard extension/package.json extension/package-lock.json \
	extension/tsconfig.json extension/src/*.ts extension/style/* extension/schema/*.json)

$(VENV)/.extension.stamp: $(EXTENSION_SOURCES) | $(BIN)/python
	if command -v npm >/dev/null; then
		if [ ! extension/node_modules/.package-lock.json -nt extension/package-lock.json ]; then
			npm ci --prefix extension --no-audit --no-fund --loglevel=error
		fi
		npm run --prefix extension --silent build
	else
		echo "npm not found: the JupyterLab extension is not built (apt-get install nodejs npm)"
	fi
	touch $@

$(VENV)/.lab.stamp: pyproject.toml $(VENV)/.extension.stamp | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[lab]'
	touch $@

$(VENV)/.test.stamp: pyproject.toml $(VENV)/.extension.stamp | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,lab]'
	touch $@

# One server: JupyterLab, whose imagingkit extension serves the sandbox at /imagingkit/
# (fhir/, dicom-web/, fhircast/, iid/, viewer/) behind Jupyter's token; the notebooks
# (imagingkit.sandbox.running.find_or_start) and the JupyterLab panel both use it.
demo: $(VENV)/.lab.stamp
	@echo "Starting JupyterLab on notebooks/ with the imagingkit sandbox ($(SIZE)) inside;"
	echo "the first run generates its data (the notebooks wait for it). Ctrl-C stops it."
	IMAGINGKIT_SANDBOX=1 IMAGINGKIT_SANDBOX_SIZE=$(SIZE) exec $(BIN)/jupyter lab -y \
		--ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) $(ALLOW_ROOT) notebooks/

# every step runs even if an earlier one fails, so a lint error does not hide test results
test: $(VENV)/.test.stamp
	failed=""
	$(BIN)/ruff check . || failed="$$failed ruff-check"
	$(BIN)/ruff format --check . || failed="$$failed ruff-format"
	$(BIN)/mypy || failed="$$failed mypy"
	$(BIN)/pytest $(PYTEST_ARGS) || failed="$$failed pytest"
	if [ -n "$$failed" ]; then echo "make test failed:$$failed"; exit 1; fi
