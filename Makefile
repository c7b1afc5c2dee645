# The README's two commands:
#   make demo   create .venv, install, serve the sandbox and open JupyterLab on notebooks/
#   make test   create .venv, install the test tools, lint, type-check and run every test
#
# Both are idempotent: the installs are recorded in stamp files inside .venv and redone
# only when pyproject.toml changes. Variables: PYTHON (interpreter creating .venv),
# PORT (sandbox server, default 8042), LAB_PORT (JupyterLab, default 8888),
# SIZE (sandbox size, default "default"), PYTEST_ARGS (extra pytest arguments).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8042
LAB_PORT ?= 8888
SIZE ?= default
PYTEST_ARGS ?=
DEMO_LOG := .cache/demo/serve.log
# Jupyter refuses to run as root unless told (containers, CI machines)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help demo test

help:
	@echo "make demo   serve the imaging sandbox on http://127.0.0.1:$(PORT)/ and open JupyterLab"
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

demo: $(VENV)/.lab.stamp
	@mkdir -p $(dir $(DEMO_LOG))
	$(BIN)/imagingkit serve --sandbox --size $(SIZE) --port $(PORT) > $(DEMO_LOG) 2>&1 &
	server=$$!
	trap 'kill $$server 2>/dev/null || true; wait $$server 2>/dev/null || true' EXIT
	echo "Starting the imagingkit sandbox (the first run generates its data) ..."
	for _ in $$(seq 1800); do
		grep -q '^imagingkit ready on' $(DEMO_LOG) && break
		if ! kill -0 $$server 2>/dev/null; then
			cat $(DEMO_LOG); echo "imagingkit serve stopped (is port $(PORT) taken? try make demo PORT=...)"; exit 1
		fi
		sleep 0.1
	done
	if ! grep -q '^imagingkit ready on' $(DEMO_LOG); then
		cat $(DEMO_LOG); echo "imagingkit serve was not ready after 180 s"; exit 1
	fi
	grep -A 20 '^imagingkit ready on' $(DEMO_LOG) | grep -E '^(imagingkit ready on|  [a-z])'
	echo "Starting JupyterLab; Ctrl-C stops it and the sandbox."
	$(BIN)/jupyter lab -y --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) $(ALLOW_ROOT) notebooks/

# every step runs even if an earlier one fails, so a lint error does not hide test results
test: $(VENV)/.test.stamp
	failed=""
	$(BIN)/ruff check . || failed="$$failed ruff-check"
	$(BIN)/ruff format --check . || failed="$$failed ruff-format"
	$(BIN)/mypy || failed="$$failed mypy"
	$(BIN)/pytest $(PYTEST_ARGS) || failed="$$failed pytest"
	if [ -n "$$failed" ]; then echo "make test failed:$$failed"; exit 1; fi
