# Two entry points for a fresh machine: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Both build the virtual environment first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/autocompress search

test: $(VENV)/.installed
	PYTHONHASHSEED=0 $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check autocompress tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
