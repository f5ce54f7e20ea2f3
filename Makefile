# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   build .venv from requirements.lock, run the Airflow DAG end to end, serve the ranker
#   make test   build .venv if needed, run the test suite (what CI runs)
# and, to work from the Airflow UI:
#   make airflow   start Airflow on http://127.0.0.1:$(AIRFLOW_PORT) with the project's DAGs (ctr airflow-ui)
PYTHON ?= python3.11
VENV := .venv
UV_VERSION := 0.13.9
AIRFLOW_PORT ?= 8080

.PHONY: venv demo airflow test test-deps lint audit clean
venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --compile-bytecode -r requirements.lock
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps -e .
	@touch $@

demo: venv
	bash scripts/demo.sh

airflow: venv
	$(VENV)/bin/ctr airflow-ui --port $(AIRFLOW_PORT)

# Debian packages the tests use, as command:package: a real redis-server for the Redis online
# store, headless Chromium with its WebDriver for the Airflow UI test, and PostgreSQL for the
# production-profile test (Debian keeps its programs in /usr/lib/postgresql/<major>/bin), and
# Java 17 for the Spark engine's tests (a real local Spark, CTR_ENGINE=spark).
TEST_DEBS := redis-server:redis-server chromium:chromium chromedriver:chromium-driver initdb:postgresql \
  java:openjdk-17-jre-headless
test-deps:
	@missing=; PATH="$$PATH$$(printf ':%s' /usr/lib/postgresql/*/bin)"; for dep in $(TEST_DEBS); do \
	  command -v $${dep%%:*} > /dev/null || missing="$$missing $${dep#*:}"; done; \
	[ -z "$$missing" ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; }

test: venv test-deps
	$(VENV)/bin/python -m pytest

lint: venv
	$(VENV)/bin/ruff check .

# Known vulnerabilities of the pinned dependencies: var/pip-audit.json and var/pip-audit.md
# (exit 1: vulnerable pins, 2: the vulnerability database could not be reached). pip-audit lives
# in its own venv so that it never changes the project's. Triage goes in SECURITY.md.
AUDIT_VENV := .venv-audit
PIP_AUDIT_VERSION := 2.10.1
AUDIT_SERVICE ?= pypi

$(AUDIT_VENV)/.installed:
	@test -x $(AUDIT_VENV)/bin/python || $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install -q --disable-pip-version-check pip-audit==$(PIP_AUDIT_VERSION)
	@touch $@

audit: $(AUDIT_VENV)/.installed
	$(AUDIT_VENV)/bin/python scripts/audit.py --pip-audit $(AUDIT_VENV)/bin/pip-audit \
	  --requirements requirements.lock --service $(AUDIT_SERVICE) --out var

clean:
	rm -rf var
