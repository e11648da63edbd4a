# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Packages mypy checks (franca_core: disallow_untyped_defs, see [tool.mypy] in pyproject.toml).
MYPY_PATHS ?= franca_core tasks

.PHONY: install demo test test-fast lint bench clean postgres chromium

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==24.3.1
	# pip (not uv/poetry): it takes torch/torchvision from this machine's local wheels.
	$(PY) -m pip install -q -r requirements.lock
	# img2dataset pulls the `dataclasses` backport, which breaks Prefect's server (STACK.md).
	$(PY) -m pip uninstall -y -q dataclasses || true
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/franca demo

# PostgreSQL's server from Debian's packages, for tests/infra/test_mlflow_postgres_s3.py (which starts a throwaway
# cluster of its own on 127.0.0.1): installed when missing, as root, without the package's default cluster (nothing
# listens on 5432). Without root or apt-get it says so and that test skips with the reason.
PG_INITDB ?= /usr/lib/postgresql/*/bin/initdb
PG_INSTALL ?= apt-get install -y -q --no-install-recommends postgresql
postgres:
	@if ls $(PG_INITDB) >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make postgres: no PostgreSQL server and no root apt-get here; the MLflow-on-PostgreSQL test will skip"; \
	  exit 0; fi; \
	mkdir -p /etc/postgresql-common/createcluster.d && \
	echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/franca-no-main-cluster.conf && \
	export DEBIAN_FRONTEND=noninteractive && { $(PG_INSTALL) || { apt-get update -q && $(PG_INSTALL); }; }

# Chromium from Debian's packages, for the browser check of the MLflow UI in tests/flows/test_deployment.py (run with
# infra/offline.py's flags: no request leaves loopback): installed when missing, as root; otherwise that test skips.
CHROMIUM_INSTALL ?= apt-get install -y -q --no-install-recommends chromium
chromium:
	@if command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make chromium: no Chromium and no root apt-get here; the MLflow UI browser test will skip"; \
	  exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive && { $(CHROMIUM_INSTALL) || { apt-get update -q && $(CHROMIUM_INSTALL); }; }

# ruff and mypy run first; either one failing fails the target before pytest starts.
test: lint postgres chromium
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(MYPY_PATHS)

clean:
	rm -rf $(VENV) .franca .pytest_cache .mypy_cache .ruff_cache
