# Quick start: `make run` (set up, then run the pipeline on the synthetic set) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-slow lint docs ui clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,dask,ray]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sketchpipe run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

ui: $(STAMP)
	$(BIN)/sketchpipe ui

clean:
	rm -rf data .prefect mlflow/mlflow.db mlflow/artifacts site
