# One verb per job. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Tests run in parallel; set PYTEST_WORKERS=0 to run them in one process.
PYTEST_WORKERS ?= 2

.PHONY: run test bench lint format smoke install install-dev clean

$(BIN)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

run: install
	$(PY) manage.py migrate --no-input
	$(PY) manage.py collectstatic --no-input -v0
	$(PY) manage.py setup_demo
	$(BIN)/honcho start -f Procfile

test: install-dev
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Walks the README's path on the embedded defaults (SQLite, file broker) with a
# real web server and worker.
smoke: install-dev
	$(PY) scripts/smoke.py

bench: install-dev
	$(PY) -m bench

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var
