# Every target sets up what it needs on a fresh machine: a .venv with runwatch installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo

.PHONY: demo test bench lint clean services

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)/live $(DEMO)/config
	@# The simulated history spans the last 6 h; alert on all of it, not only the last hour.
	@sed 's/^alert_lookback: 1h/alert_lookback: 12h/' config/alerts.yaml > $(DEMO)/config/alerts.yaml
	@# Two service levels over the simulated runs (`runwatch slo`, SLO_BURN alerts, metrics).
	@printf 'slos:\n  - {name: pipeline_success, sli: success, objective: 0.9, min_events: 5}\n  - {name: pipeline_latency, sli: duration, objective: 0.8, threshold: 20m, min_events: 5}\n' > $(DEMO)/config/runwatch.yaml
	@echo "== 1. the service starts and follows $(DEMO)/live (derived events and alerts print below)"
	@cd $(DEMO) && ../$(BIN)/runwatch tail live --db runwatch.db & echo $$! > $(DEMO)/tail.pid
	@sleep 1
	@echo "== 2. the simulator writes 12 runs into $(DEMO)/live, live, at 400 events/s"
	@$(BIN)/runwatch simulate --out $(DEMO)/live --runs 12 --seed 7 --live 400
	@$(BIN)/python -c "import sqlite3,time; db=sqlite3.connect('$(DEMO)/runwatch.db'); \
	  q=\"SELECT count(*) FROM outbox WHERE state='pending'\"; \
	  [time.sleep(0.2) for _ in range(150) if db.execute(q).fetchone()[0]]"
	@sleep 1; kill -TERM $$(cat $(DEMO)/tail.pid); sleep 1
	@echo "== 3. the projection the service kept"
	@$(BIN)/runwatch status --db $(DEMO)/runwatch.db
	@echo "== 4. the alerts it decided, and where they went"
	@$(BIN)/runwatch alerts list --db $(DEMO)/runwatch.db --limit 12
	@echo "== 5. reports and archives of the finished runs, made on completion"
	@echo "reports: $(DEMO)/reports/index.html ($$(ls $(DEMO)/reports | wc -l) files)"
	@cd $(DEMO) && ../$(BIN)/runwatch archive --verify --db runwatch.db
	@echo "== 6. the audit trail's hash chain"
	@cd $(DEMO) && ../$(BIN)/runwatch audit verify --db runwatch.db
	@echo "== 7. service levels: each SLO's error budget, burn rates and alert level"
	@cd $(DEMO) && ../$(BIN)/runwatch slo --db runwatch.db
	@echo "== 8. a clean rebuild from the same logs gives the same rows, and sends nothing"
	@$(BIN)/runwatch replay $(DEMO)/live --db $(DEMO)/replayed.db
	@$(BIN)/python -c "import sqlite3,sys; q='SELECT * FROM runs ORDER BY run_id'; \
	  a,b=(sqlite3.connect(f'$(DEMO)/{n}.db').execute(q).fetchall() for n in ('runwatch','replayed')); \
	  print('identical runs table:', a==b); sys.exit(a!=b)"

test: $(STAMP)
	@# The HTML report and dashboard tests render pages in real headless Chromium (Debian's
	@# package; Playwright drives it, never a downloaded browser).
	@command -v chromium >/dev/null || apt-get install -y chromium >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && apt-get install -y chromium >/dev/null 2>&1) || \
		echo "could not install chromium: the HTML report and dashboard browser tests will fail"
	@# The mixin tests run the real promtool, the Alertmanager tests a real Alertmanager.
	@command -v promtool >/dev/null || apt-get install -y prometheus >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && apt-get install -y prometheus >/dev/null 2>&1) || \
		echo "could not install prometheus (promtool): the mixin tests will fail"
	@command -v prometheus-alertmanager >/dev/null || \
		apt-get install -y prometheus-alertmanager >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && apt-get install -y prometheus-alertmanager >/dev/null 2>&1) || \
		echo "could not install prometheus-alertmanager: the Alertmanager tests will fail"
	$(BIN)/pytest -q

# Every shape of tests/benchmarks/corpus.py, clean and with 1 % hostile lines mixed in.
SHAPES := single,interleaved,giant,simulator
bench: $(STAMP)
	@command -v jq >/dev/null || (apt-get install -y jq >/dev/null 2>&1 || echo "jq not installed: the replay/jq ratio is skipped")
	$(BIN)/python tests/benchmarks/bench_replay.py --shape $(SHAPES) --workers default,0,1,2 --big-events 5000000 --json bench-out/replay.json
	$(BIN)/python tests/benchmarks/bench_replay.py --shape $(SHAPES) --hostile-percent 1 --repeat 1 --big-events 0 --json bench-out/replay-hostile.json
	$(BIN)/python tests/benchmarks/bench_tail.py --shape $(SHAPES) --json bench-out/tail.json
	$(BIN)/python tests/benchmarks/bench_tail.py --shape $(SHAPES) --hostile-percent 1 --phases throughput,catchup --json bench-out/tail-hostile.json
	$(BIN)/python tests/benchmarks/bench_alerts.py --json bench-out/alerts.json
	$(BIN)/python tests/benchmarks/bench_sse.py --clients 0,1,200 --json bench-out/sse.json
	$(BIN)/python tests/benchmarks/bench_analyze.py --shape $(SHAPES) --json bench-out/analyze.json
	$(BIN)/python tests/benchmarks/bench_analyze.py --shape $(SHAPES) --hostile-percent 1 --repeat 1 --json bench-out/analyze-hostile.json
	$(BIN)/python tests/benchmarks/bench_scaleout.py --json bench-out/scaleout.json
	$(BIN)/python tests/benchmarks/bench_soak.py --json bench-out/soak.json
	$(BIN)/python tests/benchmarks/bench_slo.py --json bench-out/slo.json
	$(BIN)/python tests/benchmarks/bench_traces.py --runs 10000 --json bench-out/traces.json

# For the scale-out tests on a plain Debian machine: PostgreSQL and NATS with JetStream,
# from Debian's packages, on 127.0.0.1 (the embedded default never needs them).
PROBE = python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)"
services:
	@command -v pg_ctlcluster >/dev/null || apt-get install -y postgresql >/dev/null
	@$(PROBE) 5432 2>/dev/null || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 || \
		su postgres -c "createdb test"
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || apt-get install -y nats-server >/dev/null
	@$(PROBE) 4222 2>/dev/null || start-stop-daemon --start --oknodo --background \
		--exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
	@echo "PostgreSQL on 127.0.0.1:5432 (tests use RUNWATCH_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/test), nats-server installed"

lint: $(STAMP)
	$(BIN)/ruff check stream projections sinks tests
	$(BIN)/ruff format --check stream projections sinks tests
	@rm -rf .build && mkdir -p .build/runwatch && for d in stream projections sinks; do \
		ln -s ../../$$d .build/runwatch/$$d; done
	cd .build && ../$(BIN)/mypy -p runwatch.projections -p runwatch.stream -p runwatch.sinks

clean:
	rm -rf $(VENV) .build $(DEMO) .state .pytest_cache .mypy_cache .ruff_cache .hypothesis
