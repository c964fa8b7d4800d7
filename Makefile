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
	@rm -rf $(DEMO) && mkdir -p $(DEMO)/live
	@echo "== 1. the service starts and follows $(DEMO)/live (derived events print below)"
	@cd $(DEMO) && ../$(BIN)/runwatch tail live --db runwatch.db & echo $$! > $(DEMO)/tail.pid
	@sleep 1
	@echo "== 2. the simulator writes 12 runs into $(DEMO)/live, live, at 400 events/s"
	@$(BIN)/runwatch simulate --out $(DEMO)/live --runs 12 --seed 7 --live 400
	@sleep 2; kill -TERM $$(cat $(DEMO)/tail.pid); sleep 1
	@echo "== 3. the projection the service kept"
	@$(BIN)/runwatch status --db $(DEMO)/runwatch.db
	@echo "== 4. a clean rebuild from the same logs gives the same rows"
	@$(BIN)/runwatch replay $(DEMO)/live --db $(DEMO)/replayed.db
	@$(BIN)/python -c "import sqlite3,sys; q='SELECT * FROM runs ORDER BY run_id'; \
	  a,b=(sqlite3.connect(f'$(DEMO)/{n}.db').execute(q).fetchall() for n in ('runwatch','replayed')); \
	  print('identical runs table:', a==b); sys.exit(a!=b)"
	@echo "== audit trail: $(DEMO)/logs/monitor.jsonl ($$(wc -l < $(DEMO)/logs/monitor.jsonl) records)"

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	@command -v jq >/dev/null || (apt-get install -y jq >/dev/null 2>&1 || echo "jq not installed: the replay/jq ratio is skipped")
	$(BIN)/python tests/benchmarks/bench_replay.py --json bench-out/replay.json
	$(BIN)/python tests/benchmarks/bench_tail.py --json bench-out/tail.json

lint: $(STAMP)
	$(BIN)/ruff check stream projections sinks tests
	@rm -rf .build && mkdir -p .build/runwatch && for d in stream projections sinks; do \
		ln -s ../../$$d .build/runwatch/$$d; done
	cd .build && ../$(BIN)/mypy -p runwatch.projections -p runwatch.stream -p runwatch.sinks

clean:
	rm -rf $(VENV) .build $(DEMO) .state .pytest_cache .mypy_cache .ruff_cache .hypothesis
