# Everything a fresh machine needs: `make demo`, `make test`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-scale torture clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m compileall -q src
	touch $(STAMP)

demo: $(STAMP)
	bash benchmarks/demo.sh

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy

torture: $(STAMP)
	OXBAK_TORTURE=1 HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -m torture -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/bench.py

bench-scale: $(STAMP)
	$(PY) benchmarks/bench.py --datasets huge-count --rounds 1 --out benchmarks/RESULTS-scale.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
