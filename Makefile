# Quick start: `make run` (set up, then run the pipeline on the synthetic set) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.installed-dev-stamp

.PHONY: run test test-slow lint docs ui clean

# what running needs; the tests and the docs add their tools and the Dask and Ray runners they exercise
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,dask,ray]'
	touch $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/sketchpipe run

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

test-slow: $(DEV_STAMP)
	$(BIN)/pytest -m slow

docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

ui: $(STAMP)
	$(BIN)/sketchpipe ui

clean:
	rm -rf data .prefect mlflow/mlflow.db mlflow/artifacts site
