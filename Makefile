# Two commands do everything on a fresh machine:
#   make demo   set up, then train on the bundled MNIST digits and write the report
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench frontier docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(PY) -m lightning_mpc.demo --out reports/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/memory_and_time.py --markdown

frontier: setup
	$(PY) benchmarks/frontier.py

docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) reports site .pytest_cache
