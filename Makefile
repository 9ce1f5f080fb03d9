# The two commands a newcomer types: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint lock clean

# Installs are hash-checked against requirements/*.lock (regenerate with `make lock`); torch is
# pinned by exact version and taken from the CPU wheel on local disk. The demo needs only the
# core library; `pip install 'securetrain[federated]'` / `'securetrain[service]'` add the rest.
$(BASE): pyproject.toml requirements/runtime.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps torch==2.13.0
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/runtime.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(BASE)

# The tests also need the [federated] and [service] extras and the dev tools.
$(DEV): $(BASE) requirements/extras.lock requirements/dev.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/extras.lock
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/dev.lock
	$(PY) -m pip check
	touch $(DEV)

# Resolve the ranges in pyproject.toml afresh in a scratch environment and pin what was chosen.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip uv
	.lock-venv/bin/pip install --quiet torch==2.13.0
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	PATH="$(CURDIR)/.lock-venv/bin:$$PATH" .lock-venv/bin/python scripts/lock.py
	rm -rf .lock-venv

demo: $(BASE)
	$(VENV)/bin/securetrain demo --workdir demo-output

# pytest exits 5 when it collects no tests; that is not a failure of the code under test.
test: $(DEV)
	$(PY) -m pytest -q || test $$? -eq 5

# Style and types: ruff's linter and formatter, and mypy (strict on privacy, crypto, sealed and
# engine; see [tool.mypy] in pyproject.toml).
lint: $(DEV)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .lock-venv demo-output .pytest_cache
