# dpledger: `make run` starts the service on embedded SQLite, `make test` runs the whole suite.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench docs openapi clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[dev,trainer,opacus,federated,docs,bench]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dpledger serve

# About 10 minutes on a warm .venv (25 the first time). With DATABASE_URL set to PostgreSQL, its
# database is created first when missing (one clear line when the server cannot be reached).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/ensure_test_database.py
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/accountant.py
	$(BIN)/python bench/cli_startup.py

# The documentation site, built strictly into site/ (tests/e2e/test_docs.py also builds it).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

openapi: $(STAMP)
	$(BIN)/python scripts/export_openapi.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis site
