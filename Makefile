# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   build .venv from requirements.lock, run the Airflow DAG end to end, serve the ranker
#   make test   build .venv if needed, run the test suite (what CI runs)
PYTHON ?= python3.11
VENV := .venv
UV_VERSION := 0.13.9

.PHONY: venv demo test lint clean
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps -e .
	@touch $@

demo: venv
	bash scripts/demo.sh

test: venv
	$(VENV)/bin/python -m pytest

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf var
