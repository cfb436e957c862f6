# The two commands of the README: `make test` and `make reproduce`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slow reproduce paper bench lint format clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks validation figures
	$(VENV)/bin/ruff format --check src tests benchmarks validation figures

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks validation figures
	$(VENV)/bin/ruff check --fix src tests benchmarks validation figures

test: lint
	$(PY) -m pytest -m "not slow" -q tests README.md

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q tests

reproduce: $(STAMP)
	$(PY) -m validation --quick

paper: reproduce
	cd paper && if command -v latexmk >/dev/null; then latexmk -pdf supplement.tex; \
	else echo "LaTeX (latexmk) is not installed: tables and figures are written, PDF skipped"; fi

bench: $(STAMP)
	$(PY) benchmarks/bench_lmm.py
	$(PY) benchmarks/bench_lmmtest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
