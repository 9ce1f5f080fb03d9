# The two commands a newcomer types: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint clean

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

$(DEV): $(BASE)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV)

demo: $(BASE)
	$(VENV)/bin/securetrain demo --workdir demo-output

# pytest exits 5 when it collects no tests; that is not a failure of the code under test.
test: $(DEV)
	$(PY) -m pytest -q || test $$? -eq 5

lint: $(DEV)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache
