# The two set-up commands of the README: `make dev` (run keystate on a local broker) and `make test`
# (lint and type checks first, then the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keystate-installed

.PHONY: dev test lint install stop browser

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# setuptools announces every editable install ("Editable installation ... be careful with
	# folders named like your package"): information, not a problem, and noise on a first run.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e '.[dev]'
	touch $@

dev: install
	$(BIN)/keystate dev start

stop: install
	$(BIN)/keystate dev stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/python .ci/typecheck.py

# Debian's chromium for the web UI's browser test; does nothing when it is there, never fails.
browser:
	bash scripts/install-browser.sh

test: lint browser
	$(BIN)/pytest
