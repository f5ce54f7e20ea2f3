# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   build .venv from requirements.lock, run the Airflow DAG end to end, serve the ranker
#   make test   build .venv if needed, run the test suite (what CI runs)
PYTHON ?= python3.11
VENV := .venv
UV_VERSION := 0.13.9

.PHONY: venv demo test test-deps lint clean
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps -e .
	@touch $@

demo: venv
	bash scripts/demo.sh

# The tests start a real redis-server (Debian package) for the Redis online store.
test-deps:
	@command -v redis-server > /dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q redis-server; }

test: venv test-deps
	$(VENV)/bin/python -m pytest

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf var
