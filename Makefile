# The two set-up commands of the README: `make dev` (run keystate on a local broker) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keystate-installed

.PHONY: dev test install stop

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

dev: install
	$(BIN)/keystate dev start

stop: install
	$(BIN)/keystate dev stop

test: install
	$(BIN)/pytest
