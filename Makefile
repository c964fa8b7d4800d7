# Every target sets up what it needs on a fresh machine: a .venv with runwatch installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(BIN)/runwatch simulate --out $(DEMO)/events --runs 12 --seed 7
	$(BIN)/runwatch replay $(DEMO)/events --db $(DEMO)/runwatch.db
	$(BIN)/runwatch status --db $(DEMO)/runwatch.db

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_replay.py

lint: $(STAMP)
	$(BIN)/ruff check stream projections sinks tests
	@rm -rf .build && mkdir -p .build/runwatch && for d in stream projections sinks; do \
		ln -s ../../$$d .build/runwatch/$$d; done
	cd .build && ../$(BIN)/mypy -p runwatch.projections -p runwatch.stream -p runwatch.sinks

clean:
	rm -rf $(VENV) .build $(DEMO) .state .pytest_cache .mypy_cache .ruff_cache .hypothesis
