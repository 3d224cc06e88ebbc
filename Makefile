# README's two commands: `make demo` (set up, run the built-in sample) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geoseg-installed

.PHONY: install demo test test-all bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,baseline]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/geoseg demo -o demo-output --overwrite

test: $(STAMP)
	$(BIN)/pytest

test-all: $(STAMP)
	$(BIN)/pytest -m ""

bench: $(STAMP)
	$(BIN)/python benchmarks/predict.py
