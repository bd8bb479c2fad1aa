# batchkit: developer commands. `make test` and `make demo` work from a fresh clone.
#
# Every environment comes from one lock, uv.lock, through uv (pinned below and installed
# into .tools/ on first use), so the suite passes on a fresh clone any day, not only on the
# day it landed. Change a dependency in pyproject.toml, then `make lock`, and commit both.
PYTHON     ?= python3
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
# The pinned uv is installed once per version: a new UV_VERSION reinstalls it.
UV_STAMP   := $(TOOLS)/.uv-$(UV_VERSION)
VENV       ?= .venv
PY          = $(VENV)/bin/python
# The interpreters that `make test-pythons` runs the suite on (those the classifiers claim).
PYTHONS    ?= 3.11 3.12 3.13
# --compile-bytecode: every package's bytecode is written once, at install. Without it an
# environment with PYTHONDONTWRITEBYTECODE set compiles SQLAlchemy and the rest again in
# every process it starts (the suite starts hundreds: it took half the worker tests' CPU).
SYNC        = $(UV) sync --locked --quiet --compile-bytecode --python $(PYTHON)

# uv must not fetch an interpreter of its own: it uses the one named by PYTHON.
export UV_PYTHON_DOWNLOADS := never
# mkdocs-material prints a notice about MkDocs 2 on every build; it is not a warning of ours.
export NO_MKDOCS_2_WARNING := 1

.PHONY: test check lint typecheck docs demo web lock lock-upgrade test-latest test-lowest \
	test-pythons bench bench-storage bench-workers bench-peers soak clean dev-env screenshots

$(UV_STAMP):
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@touch $@

## The development environment: exactly the lock's `dev` and `all` extras.
dev-env: $(UV_STAMP)
	$(SYNC) --extra dev --extra all

## Run the whole suite: lint, format check, mypy --strict, docs build, tests.
test: dev-env
	@$(MAKE) --no-print-directory check

## The suite in $(VENV) as it is (the targets below point it at other environments). Most
## tests wait on servers and worker processes: they run in $(TEST_PROCESSES) processes at
## once; the few that act on a whole server (marked `serial`) run alone afterwards.
TEST_PROCESSES ?= 2
check:
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/site
	@# batchkit's own bytecode, for the same reason (an editable install is not compiled).
	$(PY) -m compileall -q src examples tests benchmarks >/dev/null
	$(PY) -m pytest -n $(TEST_PROCESSES) -m "not slow and not serial" --durations=40
	$(PY) -m pytest -m "serial and not slow" --durations=5

lint: dev-env
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: dev-env
	$(VENV)/bin/mypy

docs: dev-env
	$(VENV)/bin/mkdocs build --strict --site-dir $(VENV)/site

## Regenerate uv.lock after a change to pyproject.toml (other pins stay as they are).
lock: $(UV_STAMP)
	$(UV) lock --python $(PYTHON)

## Move every pin of uv.lock to the newest release that pyproject.toml allows.
lock-upgrade: $(UV_STAMP)
	$(UV) lock --upgrade --python $(PYTHON)

# The suite in a new environment $(1), resolved from pyproject.toml's ranges (not the lock)
# by uv's resolution $(2); the versions it ran with are kept in $(1)/versions.txt.
define suite-from-ranges
	rm -rf $(1)
	$(UV) venv --quiet --python $(PYTHON) $(1)
	$(UV) pip install --quiet --python $(1)/bin/python --refresh --resolution $(2) -e '.[dev,all]'
	$(UV) pip list --python $(1)/bin/python > $(1)/versions.txt
	@$(MAKE) --no-print-directory check VENV=$(1)
endef

## The suite with the newest releases that pyproject.toml's ranges allow, ignoring the lock.
test-latest: $(UV_STAMP)
	$(call suite-from-ranges,.venv-latest,highest)

## The suite with the lowest release of every dependency that pyproject.toml names
## (their own dependencies at their newest): the lower bounds must hold.
test-lowest: $(UV_STAMP)
	$(call suite-from-ranges,.venv-lowest,lowest-direct)

## The suite, from the lock, on every interpreter of PYTHONS that this machine has
## (on PATH as python3.X, or installed with pyenv); one it lacks is reported, not tested.
test-pythons: $(UV_STAMP)
	@for v in $(PYTHONS); do \
		interpreter=$$(scripts/find-python $$v) || { echo "Python $$v: not found here, not tested"; continue; }; \
		echo "Python $$v: $$($$interpreter -VV)"; \
		UV_PROJECT_ENVIRONMENT=.venv-py$$v $(UV) sync --locked --quiet --python $$interpreter \
			--extra dev --extra all || exit 1; \
		$(MAKE) --no-print-directory check VENV=.venv-py$$v || exit 1; \
	done

## The first-run demo: a video of each of 30 products (3 of them fail on purpose), with a
## live display, kept in ./batchkit-demo.db; its exit status 1 says that some failed.
## It installs only the lock's `sql` and `examples` extras (no test or lint tools).
demo: $(UV_STAMP)
	$(SYNC) --inexact --extra sql --extra examples
	$(PY) -m examples.cli generate examples/cli/products.csv || test $$? -eq 1

## The studio web app (examples/fastapi_app) on http://127.0.0.1:$(PORT), its batches in SQLite.
PORT ?= 8000
web: $(UV_STAMP)
	$(SYNC) --inexact --extra sql --extra examples
	PORT=$(PORT) $(PY) -m examples.fastapi_app

## The studio's pages at a phone's and a desktop's width, and the dashboard's, in Chromium,
## into docs/images.
screenshots: dev-env
	BATCHKIT_SCREENSHOTS=docs $(PY) -m pytest -p no:cacheprovider -q -n $(TEST_PROCESSES) \
		tests/examples/fastapi_app/test_browser.py tests/examples/fastapi_app/test_browser_pages.py \
		tests/dashboard/test_browser.py

bench: dev-env
	$(PY) benchmarks/runner_overhead.py

## SQLStorage on SQLite, and on PostgreSQL and MySQL/MariaDB when they are reachable
## (BATCHKIT_BENCH_POSTGRES_URL, BATCHKIT_BENCH_MYSQL_URL). Minutes; ARGS=--quick is faster.
bench-storage: dev-env
	$(PY) benchmarks/storages.py $(ARGS)

## 1, 2 and 4 worker processes on one 20,000-item batch, on PostgreSQL and Redis (minutes).
bench-workers: dev-env
	$(PY) benchmarks/scale_out.py $(ARGS)

## batchkit beside Celery, RQ, arq, procrastinate and Dramatiq on one workload, the peers
## installed in an environment of their own (.venv-peers) from benchmarks/peers/requirements.txt.
bench-peers:
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q -r benchmarks/peers/requirements.txt -e .
	.venv-peers/bin/python benchmarks/peers/run.py $(ARGS)

## The soak variants of the fault tests (100 SIGKILLs on 5,000 items...), and the cases CI
## leaves to it (the same test runs in CI on another store): tens of minutes.
soak: dev-env
	$(PY) -m pytest -m slow -p no:cacheprovider tests

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .venv-py3.* $(TOOLS) site .pytest_cache \
		.mypy_cache .ruff_cache .hypothesis
