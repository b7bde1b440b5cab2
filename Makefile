# Two entry points for a fresh machine: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Both build the virtual environment first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean postgres-bin

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/autocompress search

test: $(VENV)/.installed postgres-bin
	PYTHONHASHSEED=0 $(BIN)/python -m pytest -n 2 --dist worksteal

# The PostgreSQL storage tests start their own server (tests/_postgres.py): on a fresh Debian/Ubuntu
# machine, as root, install its binaries when initdb/pg_ctl are found neither on PATH nor under
# /usr/lib/postgresql; elsewhere those tests fail and say what is missing.
PG_BIN_GLOB ?= /usr/lib/postgresql/*/bin
postgres-bin:
	@if ! { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 \
	    && ! ls $(PG_BIN_GLOB)/initdb >/dev/null 2>&1 \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the PostgreSQL server (apt-get install postgresql) for the storage tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq postgresql >/dev/null 2>&1 \
	    || { apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null; }; \
	fi

lint: $(VENV)/.installed
	$(BIN)/ruff check autocompress tests benchmarks
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
