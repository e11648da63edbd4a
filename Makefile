# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Packages mypy checks (franca_core: disallow_untyped_defs, see [tool.mypy] in pyproject.toml).
MYPY_PATHS ?= franca_core tasks

.PHONY: install demo test test-fast lint bench clean

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

# ruff and mypy run first; either one failing fails the target before pytest starts.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(MYPY_PATHS)

clean:
	rm -rf $(VENV) .franca .pytest_cache .mypy_cache .ruff_cache
