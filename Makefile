# batchkit: developer commands. `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3
# mkdocs-material prints a notice about MkDocs 2 on every build; it is not a warning of ours.
export NO_MKDOCS_2_WARNING := 1
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck docs demo web bench bench-storage bench-workers soak clean venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,all]'
	@touch $(STAMP)

venv: $(STAMP)

## Run the whole suite: lint, format check, mypy --strict, docs build, tests.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/site
	$(PY) -m pytest --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir $(VENV)/site

## The first-run demo: a video of each of 30 products (3 of them fail on purpose), with a
## live display, kept in ./batchkit-demo.db; its exit status 1 says that some failed.
demo: $(STAMP)
	$(PY) -m examples.cli generate examples/cli/products.csv || test $$? -eq 1

## The studio web app (examples/fastapi_app) on http://127.0.0.1:$(PORT), its batches in SQLite.
PORT ?= 8000
web: $(STAMP)
	PORT=$(PORT) $(PY) -m examples.fastapi_app

bench: $(STAMP)
	$(PY) benchmarks/runner_overhead.py

## SQLStorage on SQLite, and on PostgreSQL and MySQL/MariaDB when they are reachable
## (BATCHKIT_BENCH_POSTGRES_URL, BATCHKIT_BENCH_MYSQL_URL). Minutes; ARGS=--quick is faster.
bench-storage: $(STAMP)
	$(PY) benchmarks/storages.py $(ARGS)

## 1, 2 and 4 worker processes on one 20,000-item batch, on PostgreSQL and Redis (minutes).
bench-workers: $(STAMP)
	$(PY) benchmarks/scale_out.py $(ARGS)

## The soak variants of the fault tests (100 SIGKILLs on 5,000 items...): tens of minutes.
soak: $(STAMP)
	$(PY) -m pytest -m slow -p no:cacheprovider tests/workers

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
